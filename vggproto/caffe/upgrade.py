"""Caffe's file upgrades, one function per rule, applied in Caffe's order.

Mirrors ``UpgradeNetAsNeeded`` (BVLC/caffe:src/caffe/util/upgrade_proto.cpp): V0 -> V1 (padding layers folded),
data-transform fields -> ``transform_param``, V1 -> V2, legacy inputs -> ``Input`` layer, BatchNorm param fix;
and ``UpgradeSolverAsNeeded`` / ``UpgradeSnapshotPrefixProperty`` for solvers.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

from vggproto.caffe.proto import caffe_pb2
from vggproto.errors import PrototxtError, SolverError

log = logging.getLogger("vggproto.caffe.upgrade")
V1 = caffe_pb2.V1LayerParameter

# V1 LayerType enum -> V2 type string (upgrade_proto.cpp: UpgradeV1LayerType).
V1_TYPE_NAMES = {
    V1.NONE: "", V1.ABSVAL: "AbsVal", V1.ACCURACY: "Accuracy", V1.ARGMAX: "ArgMax", V1.BNLL: "BNLL",
    V1.CONCAT: "Concat", V1.CONTRASTIVE_LOSS: "ContrastiveLoss", V1.CONVOLUTION: "Convolution",
    V1.DECONVOLUTION: "Deconvolution", V1.DATA: "Data", V1.DROPOUT: "Dropout", V1.DUMMY_DATA: "DummyData",
    V1.EUCLIDEAN_LOSS: "EuclideanLoss", V1.ELTWISE: "Eltwise", V1.EXP: "Exp", V1.FLATTEN: "Flatten",
    V1.HDF5_DATA: "HDF5Data", V1.HDF5_OUTPUT: "HDF5Output", V1.HINGE_LOSS: "HingeLoss", V1.IM2COL: "Im2col",
    V1.IMAGE_DATA: "ImageData", V1.INFOGAIN_LOSS: "InfogainLoss", V1.INNER_PRODUCT: "InnerProduct",
    V1.LRN: "LRN", V1.MEMORY_DATA: "MemoryData", V1.MULTINOMIAL_LOGISTIC_LOSS: "MultinomialLogisticLoss",
    V1.MVN: "MVN", V1.POOLING: "Pooling", V1.POWER: "Power", V1.RELU: "ReLU", V1.SIGMOID: "Sigmoid",
    V1.SIGMOID_CROSS_ENTROPY_LOSS: "SigmoidCrossEntropyLoss", V1.SILENCE: "Silence", V1.SOFTMAX: "Softmax",
    V1.SOFTMAX_LOSS: "SoftmaxWithLoss", V1.SPLIT: "Split", V1.SLICE: "Slice", V1.TANH: "TanH",
    V1.WINDOW_DATA: "WindowData", V1.THRESHOLD: "Threshold",
}

# V0 lowercase type -> V1 enum (upgrade_proto.cpp: UpgradeV0LayerType).
V0_TYPES = {
    "accuracy": V1.ACCURACY, "bnll": V1.BNLL, "concat": V1.CONCAT, "conv": V1.CONVOLUTION, "data": V1.DATA,
    "dropout": V1.DROPOUT, "euclidean_loss": V1.EUCLIDEAN_LOSS, "flatten": V1.FLATTEN,
    "hdf5_data": V1.HDF5_DATA, "hdf5_output": V1.HDF5_OUTPUT, "im2col": V1.IM2COL, "images": V1.IMAGE_DATA,
    "infogain_loss": V1.INFOGAIN_LOSS, "innerproduct": V1.INNER_PRODUCT, "lrn": V1.LRN,
    "multinomial_logistic_loss": V1.MULTINOMIAL_LOGISTIC_LOSS, "pool": V1.POOLING, "relu": V1.RELU,
    "sigmoid": V1.SIGMOID, "softmax": V1.SOFTMAX, "softmax_loss": V1.SOFTMAX_LOSS, "split": V1.SPLIT,
    "tanh": V1.TANH, "window_data": V1.WINDOW_DATA,
}

# Which V1 sub-message receives each V0 field, by V0 type (UpgradeV0LayerParameter).
_DATA_LIKE = {"data": "data_param", "images": "image_data_param", "window_data": "window_data_param"}
_V0_FIELD_TARGETS: dict[str, dict[str, tuple[str, str]]] = {
    "num_output": {"conv": ("convolution_param", "num_output"), "innerproduct": ("inner_product_param", "num_output")},
    "biasterm": {"conv": ("convolution_param", "bias_term"), "innerproduct": ("inner_product_param", "bias_term")},
    "weight_filler": {"conv": ("convolution_param", "weight_filler"),
                      "innerproduct": ("inner_product_param", "weight_filler")},
    "bias_filler": {"conv": ("convolution_param", "bias_filler"),
                    "innerproduct": ("inner_product_param", "bias_filler")},
    "pad": {"conv": ("convolution_param", "pad"), "pool": ("pooling_param", "pad")},
    "kernelsize": {"conv": ("convolution_param", "kernel_size"), "pool": ("pooling_param", "kernel_size")},
    "group": {"conv": ("convolution_param", "group")},
    "stride": {"conv": ("convolution_param", "stride"), "pool": ("pooling_param", "stride")},
    "pool": {"pool": ("pooling_param", "pool")},
    "dropout_ratio": {"dropout": ("dropout_param", "dropout_ratio")},
    "local_size": {"lrn": ("lrn_param", "local_size")},
    "alpha": {"lrn": ("lrn_param", "alpha")},
    "beta": {"lrn": ("lrn_param", "beta")},
    "k": {"lrn": ("lrn_param", "k")},
    "source": {**{t: (p, "source") for t, p in _DATA_LIKE.items()}, "hdf5_data": ("hdf5_data_param", "source"),
               "infogain_loss": ("infogain_loss_param", "source")},
    "scale": {t: (p, "scale") for t, p in _DATA_LIKE.items()},
    "meanfile": {t: (p, "mean_file") for t, p in _DATA_LIKE.items()},
    "batchsize": {**{t: (p, "batch_size") for t, p in _DATA_LIKE.items()},
                  "hdf5_data": ("hdf5_data_param", "batch_size")},
    "cropsize": {t: (p, "crop_size") for t, p in _DATA_LIKE.items()},
    "mirror": {t: (p, "mirror") for t, p in _DATA_LIKE.items()},
    "rand_skip": {"data": ("data_param", "rand_skip"), "images": ("image_data_param", "rand_skip")},
    "shuffle_images": {"images": ("image_data_param", "shuffle")},
    "new_height": {"images": ("image_data_param", "new_height")},
    "new_width": {"images": ("image_data_param", "new_width")},
    "concat_dim": {"concat": ("concat_param", "concat_dim")},
    "det_fg_threshold": {"window_data": ("window_data_param", "fg_threshold")},
    "det_bg_threshold": {"window_data": ("window_data_param", "bg_threshold")},
    "det_fg_fraction": {"window_data": ("window_data_param", "fg_fraction")},
    "det_context_pad": {"window_data": ("window_data_param", "context_pad")},
    "det_crop_mode": {"window_data": ("window_data_param", "crop_mode")},
    "hdf5_output_param": {"hdf5_output": ("hdf5_output_param", None)},
}


def upgrade_net(net: caffe_pb2.NetParameter, path: str | None = None) -> bool:
    """Upgrade ``net`` in place as Caffe's UpgradeNetAsNeeded does; return True when anything changed."""
    changed = False
    if net.layer and net.layers:
        raise PrototxtError("the net has both 'layer' (V2) and 'layers' (V1) entries; Caffe refuses to upgrade "
                            "such an inconsistent NetParameter: use only one of them", path=path)
    if any(v1.HasField("layer") for v1 in net.layers):
        upgrade_v0_net(net, path)
        changed = True
    if any(_needs_data_upgrade(v1) for v1 in net.layers):
        upgrade_data_transformation(net)
        changed = True
    if net.layers:
        upgrade_v1_net(net, path)
        changed = True
    if net.input:
        upgrade_net_input(net, path)
        changed = True
    if upgrade_batch_norm(net):
        changed = True
    if changed:
        log.info("%s: upgraded the net to the current format", path or "<text>")
    return changed


# --- V0 -> V1 ----------------------------------------------------------------------------------------------

def upgrade_v0_net(net: caffe_pb2.NetParameter, path: str | None = None) -> None:
    """Fold V0 'padding' layers into the following conv/pool, then turn every V0 layer into a V1 layer."""
    padding_of_top: dict[str, caffe_pb2.V1LayerParameter] = {}
    upgraded = []
    for v1 in net.layers:
        v0 = v1.layer
        if v0.type == "padding":
            if len(v1.bottom) != 1 or len(v1.top) != 1:
                raise PrototxtError("a V0 padding layer needs exactly one bottom and one top", path=path,
                                    layer=v0.name)
            padding_of_top[v1.top[0]] = v1
            continue
        new = caffe_pb2.V1LayerParameter()
        new.CopyFrom(v1)
        for i, bottom in enumerate(v1.bottom):
            pad_layer = padding_of_top.get(bottom)
            if pad_layer is None:
                continue
            if v0.type not in ("conv", "pool"):
                raise PrototxtError(f"a V0 padding layer feeds a '{v0.type}' layer; only conv and pool can absorb "
                                    "padding", path=path, layer=v0.name)
            new.bottom[i] = pad_layer.bottom[0]
            new.layer.pad = pad_layer.layer.pad
        upgraded.append(_v0_to_v1(new, path))
    del net.layers[:]
    net.layers.extend(upgraded)


def _v0_to_v1(v1_with_v0: caffe_pb2.V1LayerParameter, path: str | None) -> caffe_pb2.V1LayerParameter:
    v0 = v1_with_v0.layer
    out = caffe_pb2.V1LayerParameter()
    out.bottom.extend(v1_with_v0.bottom)
    out.top.extend(v1_with_v0.top)
    if v0.HasField("name"):
        out.name = v0.name
    if v0.HasField("type"):
        if v0.type not in V0_TYPES:
            raise PrototxtError(f"unknown V0 layer type '{v0.type}'; known: {', '.join(sorted(V0_TYPES))}",
                                path=path, layer=v0.name)
        out.type = V0_TYPES[v0.type]
    out.blobs.extend(v0.blobs)
    out.blobs_lr.extend(v0.blobs_lr)
    out.weight_decay.extend(v0.weight_decay)
    for desc, value in v0.ListFields():
        if desc.name in ("name", "type", "blobs", "blobs_lr", "weight_decay"):
            continue
        targets = _V0_FIELD_TARGETS.get(desc.name, {})
        if v0.type not in targets:
            if desc.name in ("new_num", "new_channels"):
                continue  # read by Caffe's V0 upgrade for no layer type it still supports
            raise PrototxtError(f"V0 field '{desc.name}' is not supported for layer type '{v0.type}'",
                                path=path, layer=v0.name)
        sub_name, field = targets[v0.type]
        sub = getattr(out, sub_name)
        if field is None:
            sub.CopyFrom(value)
        elif desc.message_type is not None:
            getattr(sub, field).CopyFrom(value)
        elif _is_repeated(sub, field):
            getattr(sub, field).append(value)
        else:
            setattr(sub, field, value)
    return out


def _is_repeated(message, field: str) -> bool:
    fd = message.DESCRIPTOR.fields_by_name[field]
    if hasattr(fd, "is_repeated"):  # protobuf >= 6.31; older runtimes (4.21 on) only have ``label``
        return fd.is_repeated
    return fd.label == fd.LABEL_REPEATED


# --- data transformation ----------------------------------------------------------------------------------------

_TRANSFORM_FIELDS = ("scale", "mean_file", "crop_size", "mirror")
_DATA_PARAMS = {V1.DATA: "data_param", V1.IMAGE_DATA: "image_data_param", V1.WINDOW_DATA: "window_data_param"}


def _needs_data_upgrade(v1: caffe_pb2.V1LayerParameter) -> bool:
    name = _DATA_PARAMS.get(v1.type)
    if name is None or not v1.HasField(name):
        return False
    param = getattr(v1, name)
    return any(param.HasField(f) for f in _TRANSFORM_FIELDS)


def upgrade_data_transformation(net: caffe_pb2.NetParameter) -> None:
    """Move scale/mean_file/crop_size/mirror from V1 data-layer params to ``transform_param``."""
    for v1 in net.layers:
        if not _needs_data_upgrade(v1):
            continue
        param = getattr(v1, _DATA_PARAMS[v1.type])
        for field in _TRANSFORM_FIELDS:
            if param.HasField(field):
                setattr(v1.transform_param, field, getattr(param, field))
                param.ClearField(field)


# --- V1 -> V2 -----------------------------------------------------------------------------------------------------

_V1_PARAM_FIELDS = [f.name for f in V1.DESCRIPTOR.fields if f.name.endswith("_param")]


def upgrade_v1_net(net: caffe_pb2.NetParameter, path: str | None = None) -> None:
    """Replace V1 ``layers`` by V2 ``layer`` entries (type enum -> string, blobs_lr/weight_decay -> ParamSpec)."""
    new_layers = [_v1_to_v2(v1, path) for v1 in net.layers]
    del net.layers[:]
    net.layer.extend(new_layers)


def _v1_to_v2(v1: caffe_pb2.V1LayerParameter, path: str | None) -> caffe_pb2.LayerParameter:
    if v1.HasField("layer"):
        raise PrototxtError("input NetParameter has a V0 layer inside a V1 layer; Caffe ignores such layers",
                            path=path, layer=v1.name)
    layer = caffe_pb2.LayerParameter()
    layer.bottom.extend(v1.bottom)
    layer.top.extend(v1.top)
    if v1.HasField("name"):
        layer.name = v1.name
    layer.include.extend(v1.include)
    layer.exclude.extend(v1.exclude)
    if v1.HasField("type"):
        layer.type = V1_TYPE_NAMES[v1.type]
    layer.blobs.extend(v1.blobs)
    for i, name in enumerate(v1.param):
        _param(layer, i).name = name
    for i, mode in enumerate(v1.blob_share_mode):
        _param(layer, i).share_mode = mode
    for i, lr in enumerate(v1.blobs_lr):
        _param(layer, i).lr_mult = lr
    for i, decay in enumerate(v1.weight_decay):
        _param(layer, i).decay_mult = decay
    layer.loss_weight.extend(v1.loss_weight)
    for name in _V1_PARAM_FIELDS:
        if v1.HasField(name):
            getattr(layer, name).CopyFrom(getattr(v1, name))
    return layer


def _grow_params(layer: caffe_pb2.LayerParameter, count: int):
    while len(layer.param) < count:
        layer.param.add()
    return layer.param


def _param(layer: caffe_pb2.LayerParameter, index: int) -> caffe_pb2.ParamSpec:
    return _grow_params(layer, index + 1)[index]


# --- inputs, BatchNorm -------------------------------------------------------------------------------------------

def upgrade_net_input(net: caffe_pb2.NetParameter, path: str | None = None) -> None:
    """Turn ``input`` + ``input_dim``/``input_shape`` into a leading Input layer named ``input``.

    Bare ``input`` names without dimensions (legacy caffemodels such as the official VGG ones) are stripped.
    """
    if net.input_shape or net.input_dim:
        if net.input_shape and len(net.input_shape) != len(net.input):
            raise PrototxtError(f"{len(net.input)} inputs but {len(net.input_shape)} input_shape entries",
                                path=path)
        if not net.input_shape and len(net.input_dim) != 4 * len(net.input):
            raise PrototxtError(f"{len(net.input)} inputs need {4 * len(net.input)} input_dim values, "
                                f"found {len(net.input_dim)}", path=path)
        layer = caffe_pb2.LayerParameter(name="input", type="Input")
        for i, name in enumerate(net.input):
            layer.top.append(name)
            shape = layer.input_param.shape.add()
            if net.input_shape:
                shape.CopyFrom(net.input_shape[i])
            else:
                shape.dim.extend(net.input_dim[4 * i:4 * i + 4])
        existing = list(net.layer)
        del net.layer[:]
        net.layer.append(layer)
        net.layer.extend(existing)
    net.ClearField("input")
    net.ClearField("input_shape")
    net.ClearField("input_dim")


def upgrade_batch_norm(net: caffe_pb2.NetParameter) -> bool:
    """BatchNorm layers that declare 3 ParamSpecs get lr_mult = decay_mult = 0 (their blobs are statistics)."""
    changed = False
    for layer in net.layer:
        if layer.type == "BatchNorm" and len(layer.param) == 3:
            for spec in layer.param:
                if spec.lr_mult != 0 or spec.decay_mult != 0 or not spec.HasField("lr_mult"):
                    changed = True
                spec.lr_mult = 0.0
                spec.decay_mult = 0.0
    return changed


# --- solvers ----------------------------------------------------------------------------------------------------

_SOLVER_TYPE_NAMES = {0: "SGD", 1: "Nesterov", 2: "AdaGrad", 3: "RMSProp", 4: "AdaDelta", 5: "Adam"}


def upgrade_solver(solver: caffe_pb2.SolverParameter, path: str | None = None) -> bool:
    """Replace the deprecated ``solver_type`` enum by the ``type`` string (error if both are given)."""
    if not solver.HasField("solver_type"):
        return False
    if solver.HasField("type"):
        raise SolverError(f"{path or '<text>'}: the old solver_type field (enum) and the new type field (string) "
                          "cannot both be given; keep only 'type'")
    solver.type = _SOLVER_TYPE_NAMES[solver.solver_type]
    solver.ClearField("solver_type")
    return True


def default_snapshot_prefix(solver: caffe_pb2.SolverParameter, solver_path: str) -> None:
    """Caffe's UpgradeSnapshotPrefixProperty: unset prefix -> solver path without extension; a directory prefix
    -> ``<dir>/<solver stem>``."""
    if not solver.HasField("snapshot_prefix"):
        solver.snapshot_prefix = str(Path(solver_path).with_suffix(""))
    elif os.path.isdir(solver.snapshot_prefix):
        solver.snapshot_prefix = str(Path(solver.snapshot_prefix) / Path(solver_path).stem)
