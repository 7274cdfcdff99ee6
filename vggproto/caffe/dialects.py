"""The schemas of Caffe's forks as named dialects of one superset schema, in one table.

Many published Caffe models were trained with forks (SSD, SegNet, ENet, PSPNet, Faster R-CNN, OpenCV's own proto)
whose ``caffe.proto`` adds fields and messages.  ``proto/caffe.proto`` holds BVLC's schema plus every fork field
listed here, so one set of message classes reads them all.  Text is unambiguous (a field is named), but on the
wire a fork may put a field at a number BVLC or another fork uses for something else: the forks' ``ceil_mode``
(bool, default true) sits at ``PoolingParameter`` 13, where BVLC has ``round_mode`` (enum, CEIL = 0) with the
opposite meaning for the same varint.  Such a field gets a free number in the superset schema, and
:class:`Dialect` maps the fork's own number to it: binary files of that fork are renumbered on the wire before
protobuf reads them (:func:`to_superset`) and after vggproto writes them (:func:`from_superset`), so a fork's
caffemodel reads byte-compatibly and what vggproto writes for a fork net is readable by that fork.

``bvlc`` is the default.  A text net that uses a field BVLC lacks selects the dialect that has it, with one
warning naming the fork (:func:`detect`); ``dialect=`` (``--dialect``) forces one, and a field of another fork is
then an error naming it.
"""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from functools import lru_cache

from google.protobuf import descriptor as pb_descriptor
from google.protobuf import descriptor_pb2
from google.protobuf import message as pb_message

from vggproto.caffe.proto import caffe_pb2
from vggproto.caffe.wire import LENGTH, VARINT, encode_tag, encode_varint, iter_fields
from vggproto.errors import PrototxtError

log = logging.getLogger("vggproto.caffe.dialects")

BVLC = "bvlc"


@dataclass(frozen=True)
class ForkField:
    """A field a fork adds to a message: ``number`` is the fork's own wire number, ``superset`` the one it has in
    ``proto/caffe.proto`` (the same unless that number means something else in BVLC or another fork)."""

    message: str        # the containing message, e.g. "PoolingParameter"
    name: str           # e.g. "ceil_mode"
    number: int         # the fork's wire number
    superset: int       # the number in vggproto's superset schema
    bvlc: bool = False  # a BVLC field the fork only numbers differently (it says nothing about the dialect)

    def __post_init__(self) -> None:
        field = _message(self.message).fields_by_name.get(self.name)
        if field is None or field.number != self.superset:
            raise RuntimeError(f"dialect table: {self.message}.{self.name} is not field {self.superset} of "
                               "proto/caffe.proto")


@dataclass(frozen=True)
class Dialect:
    """One fork's schema: its fields beyond BVLC's, where its source is, and the layer types it adds."""

    name: str
    fork: str                          # how messages name the fork
    source: str                        # repository and path of its caffe.proto (docs/notes/forks.md: commit)
    fields: tuple[ForkField, ...]
    layer_types: tuple[str, ...] = ()

    def renumbering(self) -> dict[str, dict[int, int]]:
        """``{message full name: {fork number: superset number}}`` for the fields whose numbers differ."""
        table: dict[str, dict[int, int]] = {}
        for f in self.fields:
            if f.number != f.superset:
                table.setdefault(f"caffe.{f.message}", {})[f.number] = f.superset
        return table


def _message(name: str) -> pb_descriptor.Descriptor:
    return caffe_pb2.DESCRIPTOR.message_types_by_name[name]


def _fields(message: str, *entries: tuple[str, int] | tuple[str, int, int]) -> tuple[ForkField, ...]:
    """``(name, number)`` for a field at the fork's own number, ``(name, fork number, superset number)`` for one
    the superset schema moved off a clash."""
    return tuple(ForkField(message, e[0], e[1], e[-1]) for e in entries)


_SSD_MESSAGES = ("NormalizedBBox", "LabelMapItem", "LabelMap", "Sampler", "SampleConstraint", "BatchSampler",
                 "EmitConstraint", "Annotation", "AnnotationGroup", "AnnotatedDatum", "ResizeParameter",
                 "SaltPepperParameter", "NoiseParameter", "DistortionParameter", "ExpansionParameter",
                 "AnnotatedDataParameter", "NormalizeParameter", "PermuteParameter", "NonMaximumSuppressionParameter",
                 "DetectionEvaluateParameter", "MultiBoxLossParameter", "VideoDataParameter")
_CEIL_MODE = _fields("PoolingParameter", ("ceil_mode", 13, 1013))
_PRIOR_BOX = _fields("PriorBoxParameter", *((n, i) for i, n in enumerate(
    ("min_size", "max_size", "aspect_ratio", "flip", "clip", "variance", "img_size", "img_h", "img_w", "step",
     "step_h", "step_w", "offset"), 1)))
_DETECTION_OUTPUT = _fields("DetectionOutputParameter", *((n, i) for i, n in enumerate(
    ("num_classes", "share_location", "background_label_id", "nms_param", "save_output_param", "code_type",
     "keep_top_k", "variance_encoded_in_target", "confidence_threshold"), 1)))
_SAVE_OUTPUT = _fields("SaveOutputParameter", *((n, i) for i, n in enumerate(
    ("output_directory", "output_name_prefix", "output_format", "label_map_file", "name_size_file",
     "num_test_image"), 1)))
_BN_SEGNET = (*_fields("LayerParameter", ("bn_param", 45)),
              *_fields("BNParameter", ("scale_filler", 1), ("shift_filler", 2), ("bn_mode", 3)))
_SEGNET_COMMON = (*_BN_SEGNET, *_fields("LossParameter", ("weight_by_label_freqs", 3, 1003), ("class_weighting", 4)),
                  *_fields("DropoutParameter", ("sample_weights_test", 2, 1002)))
_DEEPLAB = (*_fields("LayerParameter", ("interp_param", 143, 11002), ("seg_accuracy_param", 144, 11003),
                     ("mat_write_param", 145, 11004), ("dense_crf_param", 146, 11005),
                     ("domain_transform_param", 147, 11006), ("adaptive_bias_channel_param", 148, 11007),
                     ("bias_channel_param", 149, 11008), ("unique_label_param", 150, 11009), ("mat_read_param", 151)),
            *_fields("TransformationParameter", ("scale_factors", 8, 1008), ("crop_width", 9, 1009),
                     ("crop_height", 10, 1010)),
            *_fields("BatchNormParameter", ("update_global_stats", 4)),
            *_fields("ImageDataParameter", ("ignore_label", 15), ("label_type", 16)))


def _whole(*messages: str) -> tuple[ForkField, ...]:
    """Every field of fork-only messages, at their own numbers (the message itself is the fork's)."""
    return tuple(ForkField(m, f.name, f.number, f.number) for m in messages for f in _message(m).fields)


#: Every dialect, in the order auto-detection prefers them.  Field facts: docs/notes/forks-schema.md.
DIALECTS: dict[str, Dialect] = {d.name: d for d in (
    Dialect(BVLC, "BVLC Caffe", "BVLC/caffe:src/caffe/proto/caffe.proto", ()),
    Dialect("ceil", "BVLC PR #3057 forks (DenseNet-Caffe and others)", "BVLC/caffe pull request 3057", _CEIL_MODE),
    Dialect("ssd", "SSD (weiliu89/caffe)", "weiliu89/caffe:src/caffe/proto/caffe.proto (branch ssd)", (
        *_fields("LayerParameter", ("annotated_data_param", 200), ("multibox_loss_param", 201),
                 ("permute_param", 202), ("prior_box_param", 203), ("detection_output_param", 204),
                 ("detection_evaluate_param", 205), ("norm_param", 206), ("video_data_param", 207)),
        *_fields("SolverParameter", ("eval_type", 41, 1041), ("ap_version", 42, 1042), ("plateau_winsize", 43),
                 ("show_per_class_result", 44)),
        *_fields("SolverState", ("minimum_loss", 5), ("iter_last_event", 6)),
        *_fields("TransformationParameter", ("resize_param", 8), ("noise_param", 9), ("emit_constraint", 10),
                 ("crop_h", 11), ("crop_w", 12), ("distort_param", 13), ("expand_param", 14)),
        *_PRIOR_BOX, *_DETECTION_OUTPUT,
        *_fields("DetectionOutputParameter", ("visualize", 10), ("visualize_threshold", 11), ("save_file", 12)),
        *_SAVE_OUTPUT, *_fields("SaveOutputParameter", ("resize_param", 7)), *_whole(*_SSD_MESSAGES)),
        ("Normalize", "Permute", "PriorBox", "DetectionOutput", "AnnotatedData", "MultiBoxLoss", "DetectionEvaluate",
         "VideoData", "SmoothL1Loss")),
    Dialect("opencv", "OpenCV's dnn (opencv-caffe.proto)", "opencv/opencv:modules/dnn/src/caffe/opencv-caffe.proto", (
        *_CEIL_MODE,
        *_fields("LayerParameter", ("detection_output_param", 147, 204), ("permute_param", 148, 202),
                 ("norm_param", 149, 206), ("prior_box_param", 150, 203), ("proposal_param", 201, 10201),
                 ("psroi_pooling_param", 10002), ("roi_pooling_param", 8266711)),
        *_PRIOR_BOX, *_fields("PriorBoxParameter", ("offset_h", 14), ("offset_w", 15), ("width", 16), ("height", 17)),
        *_DETECTION_OUTPUT, *_fields("DetectionOutputParameter", ("normalized_bbox", 10, 1010)), *_SAVE_OUTPUT,
        *_fields("DropoutParameter", ("scale_train", 2)), *_fields("BatchNormParameter", ("scale_bias", 7)),
        *_whole("NormalizeParameter", "PermuteParameter", "NonMaximumSuppressionParameter", "NormalizedBBox",
                "ROIPoolingParameter", "ProposalParameter", "PSROIPoolingParameter")),
        ("Normalize", "Permute", "PriorBox", "DetectionOutput", "ROIPooling", "Proposal", "PSROIPooling", "ReLU6")),
    Dialect("segnet", "SegNet (alexgkendall/caffe-segnet)", "alexgkendall/caffe-segnet:src/caffe/proto/caffe.proto", (
        *_SEGNET_COMMON,
        *_fields("LayerParameter", ("upsample_param", 137, 11001), ("dense_image_data_param", 138, 46)),
        *_whole("UpsampleParameter"),
        *(f for f in _whole("DenseImageDataParameter") if f.name != "label_divide_factor")),
        ("BN", "Upsample", "DenseImageData")),
    Dialect("enet", "ENet (TimoSaemann/caffe-enet)", "TimoSaemann/caffe-enet:src/caffe/proto/caffe.proto", (
        *_SEGNET_COMMON, ForkField("LossParameter", "normalization", 5, 3, bvlc=True),
        *_fields("LayerParameter", ("upsample_param", 147, 11001), ("dense_image_data_param", 46)),
        *_fields("ImageDataParameter", ("label_divide_factor", 13)),
        *_whole("UpsampleParameter", "DenseImageDataParameter")),
        ("BN", "Upsample", "DenseImageData")),
    Dialect("pspnet", "PSPNet (hszhao/PSPNet)", "hszhao/PSPNet:src/caffe/proto/caffe.proto", (
        *_DEEPLAB, *_fields("LayerParameter", ("bn_param", 152, 45)),
        *_fields("BNParameter", ("slope_filler", 1, 1001), ("bias_filler", 2, 1002), ("momentum", 3, 1003),
                 ("eps", 4), ("frozen", 5), ("engine", 6)),
        *_whole("InterpParameter", "SegAccuracyParameter", "MatReadParameter", "MatWriteParameter",
                "DenseCRFParameter", "DomainTransformParameter", "AdaptiveBiasChannelParameter",
                "BiasChannelParameter", "UniqueLabelParameter")),
        ("Interp", "BN", "SegAccuracy", "DenseCRF", "DomainTransform", "AdaptiveBiasChannel", "BiasChannel",
         "MatRead", "MatWrite", "UniqueLabel", "ImageSegData", "SpatialProduct")),
    Dialect("deeplab", "DeepLab v2 (deeplab-public-ver2)", "deeplab-public-ver2:src/caffe/proto/caffe.proto", (
        *_DEEPLAB,
        *_whole("InterpParameter", "SegAccuracyParameter", "MatReadParameter", "MatWriteParameter",
                "DenseCRFParameter", "DomainTransformParameter", "AdaptiveBiasChannelParameter",
                "BiasChannelParameter", "UniqueLabelParameter")),
        ("Interp", "SegAccuracy", "DenseCRF", "DomainTransform", "AdaptiveBiasChannel", "BiasChannel", "MatRead",
         "MatWrite", "UniqueLabel", "ImageSegData", "SpatialProduct")),
    Dialect("fast-rcnn", "Faster R-CNN (rbgirshick/caffe-fast-rcnn)",
            "rbgirshick/caffe-fast-rcnn:src/caffe/proto/caffe.proto (branch faster-rcnn)", (
                *_fields("LayerParameter", ("roi_pooling_param", 8266711), ("smooth_l1_loss_param", 8266712)),
                *_fields("DropoutParameter", ("scale_train", 2)),
                *_whole("ROIPoolingParameter", "SmoothL1LossParameter")),
            ("ROIPooling", "SmoothL1Loss")),
    Dialect("shufflenet", "ShuffleNet (farmingyard/ShuffleNet)", "farmingyard/ShuffleNet:README (proto snippet)",
            (*_fields("LayerParameter", ("shuffle_channel_param", 164)), *_whole("ShuffleChannelParameter")),
            ("ShuffleChannel", "ConvolutionDepthwise")),
    Dialect("relu6", "Caffe-MobileNetV2-ReLU6 (rog93)", "rog93/Caffe-MobileNetV2-ReLU6:README (proto snippet)",
            (*_fields("LayerParameter", ("relu6_param", 100000)), *_whole("ReLU6Parameter")), ("ReLU6",)),
    Dialect("yolov3", "YOLOv3 in Caffe (ChenYingpeng/darknet2caffe)",
            "ChenYingpeng/darknet2caffe:README (proto snippet)",
            (*_fields("LayerParameter", ("upsample_param", 149, 11001), ("mish_param", 150, 11010)),
             *_fields("UpsampleParameter", ("scale", 1)), *_whole("MishParameter")), ("Upsample", "Mish")),
)}


# ----------------------------------------------------------------------------------------------------------------
# Which dialect a parsed message needs
# ----------------------------------------------------------------------------------------------------------------

@lru_cache(maxsize=1)
def _fork_fields_by_key() -> dict[tuple[str, str], list[str]]:
    index: dict[tuple[str, str], list[str]] = {}
    for dialect in DIALECTS.values():
        for f in dialect.fields:
            if not f.bvlc:
                index.setdefault((f.message, f.name), []).append(dialect.name)
    return index


def fork_fields_used(message: pb_message.Message) -> list[tuple[str, str]]:
    """``(message name, field name)`` of every fork field set anywhere in ``message``, in first-use order."""
    index, found = _fork_fields_by_key(), {}

    def walk(msg: pb_message.Message) -> None:
        for field, value in msg.ListFields():
            key = (msg.DESCRIPTOR.name, field.name)
            if key in index:
                found.setdefault(key, None)
            if field.type == field.TYPE_MESSAGE:
                for item in ([value] if isinstance(value, pb_message.Message) else value):
                    walk(item)
    walk(message)
    return list(found)


def _line_of(text: str | None, name: str) -> int | None:
    match = re.search(rf"(?m)^[^#\n]*\b{re.escape(name)}\s*[:{{]", text or "")
    return text.count("\n", 0, match.start()) + 1 if match else None


def detect(message: pb_message.Message, dialect: str | None = None, *, path: str | None = None,
           text: str | None = None, warn: bool = True) -> str:
    """The dialect ``message`` is read in: ``dialect`` if given (a field it lacks is a PrototxtError naming the
    field and the fork that has it), else the first dialect that has every fork field used (one warning, unless
    ``warn`` is off: writers pick the dialect of what they write silently)."""
    if dialect is not None and dialect not in DIALECTS:
        raise PrototxtError(f"unknown dialect '{dialect}'; supported: {', '.join(DIALECTS)}", path=path)
    used = fork_fields_used(message)
    if not used:
        return dialect or BVLC
    index = _fork_fields_by_key()
    if dialect is not None:
        for message_name, name in used:
            if dialect not in index[(message_name, name)]:
                raise PrototxtError(_foreign(message_name, name, index, dialect), path=path,
                                    line=_line_of(text, name))
        return dialect
    candidates = [d for d in DIALECTS if all(d in index[key] for key in used)]
    if not candidates:
        forks = {k: index[k] for k in used}
        raise PrototxtError("fields of different forks in one file: " + "; ".join(
            f"'{name}' ({', '.join(forks[(m, name)])})" for m, name in used), path=path)
    chosen = DIALECTS[candidates[0]]
    if not warn:
        return chosen.name
    first = used[0][1]
    line = _line_of(text, first)
    where = f"{path or '<text>'}:{line}: " if line else f"{path or '<text>'}: "
    log.warning("%s'%s' is a field of %s; reading with that dialect (--dialect %s)", where, first, chosen.fork,
                chosen.name)
    return chosen.name


def _foreign(message_name: str, name: str, index: dict[tuple[str, str], list[str]], dialect: str) -> str:
    owners = ", ".join(f"{DIALECTS[d].fork} (--dialect {d})" for d in index[(message_name, name)])
    return (f"unknown field '{name}' in caffe.{message_name} for dialect '{dialect}' "
            f"({DIALECTS[dialect].fork}); it is a field of {owners}")


# ----------------------------------------------------------------------------------------------------------------
# Renumbering on the wire
# ----------------------------------------------------------------------------------------------------------------

@lru_cache(maxsize=None)
def _plan(dialect: str, to_fork: bool) -> dict[str, dict[int, int]]:
    table = DIALECTS[dialect].renumbering()
    if to_fork:
        table = {m: {s: f for f, s in numbers.items()} for m, numbers in table.items()}
    return table


@lru_cache(maxsize=None)
def _reaches(descriptor: pb_descriptor.Descriptor, targets: frozenset[str]) -> bool:
    """Whether a message of this type can contain (at any depth) a message whose fields are renumbered."""
    seen, todo = set(), [descriptor]
    while todo:
        d = todo.pop()
        if d.full_name in targets:
            return True
        seen.add(d.full_name)
        todo += [f.message_type for f in d.fields if f.message_type is not None and f.message_type.full_name
                 not in seen]
    return False


def _rewrite(data: bytes | memoryview, descriptor: pb_descriptor.Descriptor, plan: dict[str, dict[int, int]],
             to_fork: bool) -> bytes:
    numbers = plan.get(descriptor.full_name, {})
    targets = frozenset(plan)
    out = bytearray()
    for raw in iter_fields(data, 0, len(data)):
        number = numbers.get(raw.number, raw.number)
        schema_number = raw.number if to_fork else number    # the number the superset schema knows it by
        field = descriptor.fields_by_number.get(schema_number)
        if raw.wire_type == LENGTH and field is not None and field.message_type is not None \
                and _reaches(field.message_type, targets):
            inner = _rewrite(data[raw.data_start:raw.end], field.message_type, plan, to_fork)
            out += encode_tag(number, LENGTH) + encode_varint(len(inner)) + inner
        elif number == raw.number:
            out += data[raw.start:raw.end]
        elif raw.wire_type == VARINT:
            out += encode_tag(number, VARINT) + encode_varint(raw.value)
        elif raw.wire_type == LENGTH:
            out += encode_tag(number, LENGTH) + encode_varint(raw.end - raw.data_start) + data[raw.data_start:raw.end]
        else:
            out += encode_tag(number, raw.wire_type) + data[raw.data_start:raw.end]
    return bytes(out)


def to_superset(data: bytes, message_type: type[pb_message.Message], dialect: str) -> bytes:
    """A fork's serialized ``message_type`` with its fields renumbered to the superset schema."""
    plan = _plan(dialect, False)
    return _rewrite(memoryview(data), message_type.DESCRIPTOR, plan, False) if plan else data


def from_superset(data: bytes, message_type: type[pb_message.Message], dialect: str) -> bytes:
    """A serialized ``message_type`` with the fork's own field numbers, as that fork writes it."""
    plan = _plan(dialect, True)
    return _rewrite(memoryview(data), message_type.DESCRIPTOR, plan, True) if plan else data


# ----------------------------------------------------------------------------------------------------------------
# A fork's own schema, rebuilt from the table (for tests and tools that want to read a file as that fork does)
# ----------------------------------------------------------------------------------------------------------------

#: The messages of proto/caffe.proto that no BVLC schema has (the forks' and vggproto's own).
EXTRA_MESSAGES = ("VGGAugmentationParameter", *_SSD_MESSAGES, "PriorBoxParameter", "SaveOutputParameter",
                  "DetectionOutputParameter", "BNParameter", "UpsampleParameter", "DenseImageDataParameter",
                  "InterpParameter", "SegAccuracyParameter", "MatReadParameter", "MatWriteParameter",
                  "DenseCRFParameter", "DomainTransformParameter", "AdaptiveBiasChannelParameter",
                  "BiasChannelParameter", "UniqueLabelParameter", "ROIPoolingParameter", "SmoothL1LossParameter",
                  "ProposalParameter", "PSROIPoolingParameter", "ShuffleChannelParameter", "ReLU6Parameter",
                  "MishParameter")


def fork_schema(dialect: str) -> descriptor_pb2.FileDescriptorProto:
    """``proto/caffe.proto`` as the fork ``dialect`` has it: BVLC's messages and fields (without vggproto's
    extension), plus the fork's fields at the fork's own numbers; a BVLC field the fork reuses the number of is
    left out.  ``fork_schema("bvlc")`` is plain BVLC Caffe's schema."""
    proto = descriptor_pb2.FileDescriptorProto()
    caffe_pb2.DESCRIPTOR.CopyToProto(proto)
    proto.name = f"{dialect}_caffe.proto"
    mine: dict[str, dict[str, int]] = {}
    for f in DIALECTS[dialect].fields:
        mine.setdefault(f.message, {})[f.name] = f.number
    every_fork_field = {(f.message, f.name) for d in DIALECTS.values() for f in d.fields if not f.bvlc}
    kept = [m for m in proto.message_type if m.name not in EXTRA_MESSAGES or m.name in mine]
    del proto.message_type[:]
    proto.message_type.extend(kept)
    for message in proto.message_type:
        numbers = mine.get(message.name, {})
        fields = []
        for field in message.field:
            if field.name in numbers:
                field.number = numbers[field.name]
                fields.append(field)
            elif (message.name, field.name) not in every_fork_field and field.name != "vgg_augmentation_param" \
                    and message.name not in EXTRA_MESSAGES:
                fields.append(field)
        taken = {f.number for f in fields if f.name in numbers}
        fields = [f for f in fields if f.name in numbers or f.number not in taken]
        del message.field[:]
        message.field.extend(fields)
    return proto
