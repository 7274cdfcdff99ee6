"""The dialect table: which fields, messages and layer types each Caffe fork adds to BVLC's schema, as data.

Each :class:`Dialect` is built with keywords; a fork's fields are listed per message as ``name=number`` (the fork's
own wire number, the same in vggproto's superset schema ``proto/caffe.proto``) or ``name=Moved(fork, superset)``
where the superset schema moved the field off a number BVLC or another fork uses for something else.  Messages
a fork adds whole are named, not listed field by field.  Every entry is checked against the superset schema when
this module is imported, and what other code needs (the messages BVLC lacks, a dialect's renumbering) is derived
from the table rather than written again.  The mechanisms that use it are in :mod:`vggproto.caffe.dialects`;
field facts and sources: docs/notes/forks-schema.md.
"""
from __future__ import annotations

from dataclasses import dataclass

from google.protobuf import descriptor as pb_descriptor

from vggproto.caffe.proto import caffe_pb2

BVLC = "bvlc"


@dataclass(frozen=True)
class Moved:
    """A fork field's number on the fork's wire (``fork``) and in the superset schema (``superset``)."""

    fork: int
    superset: int


@dataclass(frozen=True, kw_only=True)
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


@dataclass(frozen=True, kw_only=True)
class Dialect:
    """One fork's schema: its fields beyond BVLC's, where its source is, and the layer types it adds."""

    name: str
    fork: str                          # how messages name the fork
    source: str                        # repository and path of its caffe.proto (docs/notes/forks-schema.md)
    fields: tuple[ForkField, ...] = ()
    layer_types: tuple[str, ...] = ()  # the fork's layer types vggproto runs (each a registered layer class)
    schema_only: tuple[str, ...] = ()  # its layer types vggproto reads and writes but does not run

    @property
    def every_layer_type(self) -> tuple[str, ...]:
        """The layer types the fork adds to BVLC's, run by vggproto or not."""
        return self.layer_types + self.schema_only

    def renumbering(self) -> dict[str, dict[int, int]]:
        """``{message full name: {fork number: superset number}}`` for the fields whose numbers differ."""
        table: dict[str, dict[int, int]] = {}
        for f in self.fields:
            if f.number != f.superset:
                table.setdefault(f"caffe.{f.message}", {})[f.number] = f.superset
        return table


def _message(name: str) -> pb_descriptor.Descriptor:
    return caffe_pb2.DESCRIPTOR.message_types_by_name[name]


def fields(message: str, **numbers: int | Moved) -> tuple[ForkField, ...]:
    """The fields a fork adds to ``message``: ``name=number``, or ``name=Moved(fork, superset)``."""
    return tuple(ForkField(message=message, name=name, number=n.fork, superset=n.superset) if isinstance(n, Moved)
                 else ForkField(message=message, name=name, number=n, superset=n) for name, n in numbers.items())


def whole(*messages: str, but: tuple[str, ...] = ()) -> tuple[ForkField, ...]:
    """Every field (but those named) of messages only forks have, at their own numbers."""
    return tuple(ForkField(message=m, name=f.name, number=f.number, superset=f.number)
                 for m in messages for f in _message(m).fields if f.name not in but)


_SSD_MESSAGES = ("NormalizedBBox", "LabelMapItem", "LabelMap", "Sampler", "SampleConstraint", "BatchSampler",
                 "EmitConstraint", "Annotation", "AnnotationGroup", "AnnotatedDatum", "ResizeParameter",
                 "SaltPepperParameter", "NoiseParameter", "DistortionParameter", "ExpansionParameter",
                 "AnnotatedDataParameter", "NormalizeParameter", "PermuteParameter", "NonMaximumSuppressionParameter",
                 "DetectionEvaluateParameter", "MultiBoxLossParameter", "VideoDataParameter")
_DEEPLAB_MESSAGES = ("InterpParameter", "SegAccuracyParameter", "MatReadParameter", "MatWriteParameter",
                     "DenseCRFParameter", "DomainTransformParameter", "AdaptiveBiasChannelParameter",
                     "BiasChannelParameter", "UniqueLabelParameter")
_CEIL_MODE = fields("PoolingParameter", ceil_mode=Moved(13, 1013))
_PRIOR_BOX = fields("PriorBoxParameter", min_size=1, max_size=2, aspect_ratio=3, flip=4, clip=5, variance=6,
                    img_size=7, img_h=8, img_w=9, step=10, step_h=11, step_w=12, offset=13)
_DETECTION_OUTPUT = fields("DetectionOutputParameter", num_classes=1, share_location=2, background_label_id=3,
                           nms_param=4, save_output_param=5, code_type=6, keep_top_k=7,
                           variance_encoded_in_target=8, confidence_threshold=9)
_SAVE_OUTPUT = fields("SaveOutputParameter", output_directory=1, output_name_prefix=2, output_format=3,
                      label_map_file=4, name_size_file=5, num_test_image=6)
_SEGNET_COMMON = (*fields("LayerParameter", bn_param=45),
                  *fields("BNParameter", scale_filler=1, shift_filler=2, bn_mode=3),
                  *fields("LossParameter", weight_by_label_freqs=Moved(3, 1003), class_weighting=4),
                  *fields("DropoutParameter", sample_weights_test=Moved(2, 1002)))
_DEEPLAB = (*fields("LayerParameter", interp_param=Moved(143, 11002), seg_accuracy_param=Moved(144, 11003),
                    mat_write_param=Moved(145, 11004), dense_crf_param=Moved(146, 11005),
                    domain_transform_param=Moved(147, 11006), adaptive_bias_channel_param=Moved(148, 11007),
                    bias_channel_param=Moved(149, 11008), unique_label_param=Moved(150, 11009), mat_read_param=151),
            *fields("TransformationParameter", scale_factors=Moved(8, 1008), crop_width=Moved(9, 1009),
                    crop_height=Moved(10, 1010)),
            *fields("BatchNormParameter", update_global_stats=4),
            *fields("ImageDataParameter", ignore_label=15, label_type=16),
            *whole(*_DEEPLAB_MESSAGES))
_DEEPLAB_SCHEMA_ONLY = ("SegAccuracy", "DenseCRF", "DomainTransform", "AdaptiveBiasChannel", "BiasChannel", "MatRead",
                        "MatWrite", "UniqueLabel", "ImageSegData", "SpatialProduct")

#: Every dialect, in the order auto-detection prefers them.
DIALECTS: dict[str, Dialect] = {d.name: d for d in (
    Dialect(name=BVLC, fork="BVLC Caffe", source="BVLC/caffe:src/caffe/proto/caffe.proto"),
    Dialect(name="ceil", fork="BVLC PR #3057 forks (DenseNet-Caffe and others)",
            source="BVLC/caffe pull request 3057", fields=_CEIL_MODE),
    Dialect(name="ssd", fork="SSD (weiliu89/caffe)",
            source="weiliu89/caffe:src/caffe/proto/caffe.proto (branch ssd)",
            fields=(*fields("LayerParameter", annotated_data_param=200, multibox_loss_param=201, permute_param=202,
                            prior_box_param=203, detection_output_param=204, detection_evaluate_param=205,
                            norm_param=206, video_data_param=207),
                    *fields("SolverParameter", eval_type=Moved(41, 1041), ap_version=Moved(42, 1042),
                            plateau_winsize=43, show_per_class_result=44),
                    *fields("SolverState", minimum_loss=5, iter_last_event=6),
                    *fields("TransformationParameter", resize_param=8, noise_param=9, emit_constraint=10, crop_h=11,
                            crop_w=12, distort_param=13, expand_param=14),
                    *_PRIOR_BOX, *_DETECTION_OUTPUT,
                    *fields("DetectionOutputParameter", visualize=10, visualize_threshold=11, save_file=12),
                    *_SAVE_OUTPUT, *fields("SaveOutputParameter", resize_param=7), *whole(*_SSD_MESSAGES)),
            layer_types=("Normalize", "Permute", "PriorBox", "DetectionOutput", "SmoothL1Loss"),
            schema_only=("AnnotatedData", "MultiBoxLoss", "DetectionEvaluate", "VideoData")),
    Dialect(name="opencv", fork="OpenCV's dnn (opencv-caffe.proto)",
            source="opencv/opencv:modules/dnn/src/caffe/opencv-caffe.proto",
            fields=(*_CEIL_MODE,
                    *fields("LayerParameter", detection_output_param=Moved(147, 204), permute_param=Moved(148, 202),
                            norm_param=Moved(149, 206), prior_box_param=Moved(150, 203),
                            proposal_param=Moved(201, 10201), psroi_pooling_param=10002,
                            roi_pooling_param=8266711),
                    *_PRIOR_BOX, *fields("PriorBoxParameter", offset_h=14, offset_w=15, width=16, height=17),
                    *_DETECTION_OUTPUT, *fields("DetectionOutputParameter", normalized_bbox=Moved(10, 1010)),
                    *_SAVE_OUTPUT, *fields("DropoutParameter", scale_train=2),
                    *fields("BatchNormParameter", scale_bias=7),
                    *whole("NormalizeParameter", "PermuteParameter", "NonMaximumSuppressionParameter",
                           "NormalizedBBox", "ROIPoolingParameter", "ProposalParameter", "PSROIPoolingParameter")),
            layer_types=("Normalize", "Permute", "PriorBox", "DetectionOutput", "ROIPooling", "Proposal", "ReLU6"),
            schema_only=("PSROIPooling",)),
    Dialect(name="segnet", fork="SegNet (alexgkendall/caffe-segnet)",
            source="alexgkendall/caffe-segnet:src/caffe/proto/caffe.proto",
            fields=(*_SEGNET_COMMON,
                    *fields("LayerParameter", upsample_param=Moved(137, 11001), dense_image_data_param=Moved(138, 46)),
                    *whole("UpsampleParameter"), *whole("DenseImageDataParameter", but=("label_divide_factor",))),
            layer_types=("BN", "Upsample"), schema_only=("DenseImageData",)),
    Dialect(name="enet", fork="ENet (TimoSaemann/caffe-enet)",
            source="TimoSaemann/caffe-enet:src/caffe/proto/caffe.proto",
            fields=(*_SEGNET_COMMON,
                    ForkField(message="LossParameter", name="normalization", number=5, superset=3, bvlc=True),
                    *fields("LayerParameter", upsample_param=Moved(147, 11001), dense_image_data_param=46),
                    *fields("ImageDataParameter", label_divide_factor=13),
                    *whole("UpsampleParameter", "DenseImageDataParameter")),
            layer_types=("BN", "Upsample"), schema_only=("DenseImageData",)),
    Dialect(name="pspnet", fork="PSPNet (hszhao/PSPNet)", source="hszhao/PSPNet:src/caffe/proto/caffe.proto",
            fields=(*_DEEPLAB, *fields("LayerParameter", bn_param=Moved(152, 45)),
                    *fields("BNParameter", slope_filler=Moved(1, 1001), bias_filler=Moved(2, 1002),
                            momentum=Moved(3, 1003), eps=4, frozen=5, engine=6)),
            layer_types=("Interp", "BN"), schema_only=_DEEPLAB_SCHEMA_ONLY),
    Dialect(name="deeplab", fork="DeepLab v2 (deeplab-public-ver2)",
            source="deeplab-public-ver2:src/caffe/proto/caffe.proto", fields=_DEEPLAB, layer_types=("Interp",),
            schema_only=_DEEPLAB_SCHEMA_ONLY),
    Dialect(name="fast-rcnn", fork="Faster R-CNN (rbgirshick/caffe-fast-rcnn)",
            source="rbgirshick/caffe-fast-rcnn:src/caffe/proto/caffe.proto (branch faster-rcnn)",
            fields=(*fields("LayerParameter", roi_pooling_param=8266711, smooth_l1_loss_param=8266712),
                    *fields("DropoutParameter", scale_train=2), *whole("ROIPoolingParameter", "SmoothL1LossParameter")),
            layer_types=("ROIPooling", "SmoothL1Loss")),
    Dialect(name="shufflenet", fork="ShuffleNet (farmingyard/ShuffleNet)",
            source="farmingyard/ShuffleNet:README (proto snippet)",
            fields=(*fields("LayerParameter", shuffle_channel_param=164), *whole("ShuffleChannelParameter")),
            layer_types=("ShuffleChannel", "ConvolutionDepthwise")),
    Dialect(name="relu6", fork="Caffe-MobileNetV2-ReLU6 (rog93)",
            source="rog93/Caffe-MobileNetV2-ReLU6:README (proto snippet)",
            fields=(*fields("LayerParameter", relu6_param=100000), *whole("ReLU6Parameter")), layer_types=("ReLU6",)),
    Dialect(name="yolov3", fork="YOLOv3 in Caffe (ChenYingpeng/darknet2caffe)",
            source="ChenYingpeng/darknet2caffe:README (proto snippet)",
            fields=(*fields("LayerParameter", upsample_param=Moved(149, 11001), mish_param=Moved(150, 11010)),
                    *fields("UpsampleParameter", scale=1), *whole("MishParameter")),
            layer_types=("Upsample", "Mish")),
)}

#: vggproto's one extension of the schema (tests/test_schema.py): a field and the message it holds.
OWN_FIELD, OWN_MESSAGE = ("TransformationParameter", "vgg_augmentation_param"), "VGGAugmentationParameter"


def _extra_messages() -> tuple[str, ...]:
    """The messages of proto/caffe.proto that no BVLC schema has: vggproto's own, and those every field of which
    is a fork's (derived from the table, so a fork message added there is known here too)."""
    added = {(f.message, f.name) for d in DIALECTS.values() for f in d.fields if not f.bvlc}
    return (OWN_MESSAGE, *(m.name for m in caffe_pb2.DESCRIPTOR.message_types_by_name.values()
                           if m.fields and all((m.name, f.name) in added for f in m.fields)))


#: The messages of proto/caffe.proto that no BVLC schema has (the forks' and vggproto's own).
EXTRA_MESSAGES = _extra_messages()
