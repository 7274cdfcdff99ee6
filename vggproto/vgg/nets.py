"""Build the VGG nets of Table 1 as ``NetParameter`` messages by one loop over :data:`vggproto.vgg.configs.TABLE1`.

Three kinds of net per configuration:

* ``train_val``: TRAIN and TEST data layers with the paper's augmentation (Sect. 3.1), fillers, dropout,
  SoftmaxWithLoss and top-1/top-5 Accuracy in TEST.
* ``deploy``: the official release's layout (Input 10×3×224×224 ... Softmax ``prob``), no fillers, BVLC only.
* ``dense``: the fully-convolutional test net of Sect. 3.2 (fc6 as a 7×7 conv, fc7/fc8 as 1×1 convs).

Each builder returns ``(layer, comment)`` pairs; the comment (possibly empty) is printed above the layer by
:mod:`vggproto.vgg.generate`, so that non-obvious choices are explained inside the generated files.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from vggproto.caffe.proto import caffe_pb2
from vggproto.caffe.shapes import conv_output_size, pool_output_size
from vggproto.errors import VGGProtoError
from vggproto.vgg.configs import (
    DENSE_LAYER_NAMES,
    LRN_ALPHA_CAFFE,
    LRN_BETA,
    LRN_K,
    LRN_LOCAL_SIZE,
    MEAN_BGR,
    NO_RESCALE,
    TABLE1,
    parse_scale,
    parse_token,
    test_scale_for,
)

KINDS: tuple[str, ...] = ("train_val", "deploy", "dense")
DATA_BACKENDS: tuple[str, ...] = ("lmdb", "imagedata", "hdf5")
INITS: tuple[str, ...] = ("gaussian", "xavier", "msra")
DEFAULT_SOURCES = {"lmdb": ("data/ilsvrc12_train_lmdb", "data/ilsvrc12_val_lmdb"),
                   "imagedata": ("data/train.txt", "data/val.txt"),
                   "hdf5": ("data/train_h5.txt", "data/val_h5.txt")}
# Appendix A (localisation): the last FC regresses a box; BoxData reads box list files (vggproto.data.boxes).
TASKS: tuple[str, ...] = ("classification", "localization")
REGRESSIONS: tuple[str, ...] = ("scr", "pcr")     # single-class (4 outputs) / per-class (4 x classes)
FINETUNES: tuple[str, ...] = ("all", "fc")        # fine-tune every layer / only the FC layers (lr_mult 0 on convs)
LOC_LAYER = "fc8-loc"                             # renamed so that classification weights leave it random
LOC_SOURCES = ("data/loc_train.txt", "data/loc_val.txt")
Commented = list[tuple[caffe_pb2.LayerParameter, str]]

LRN_COMMENT = ("Krizhevsky et al. (2012) LRN: n=5, alpha=1e-4, beta=0.75, k=2, alpha multiplying the plain sum\n"
               "of squares. Caffe divides alpha by local_size (src/caffe/layers/lrn_layer.cpp), so the same\n"
               "normalisation is written alpha = 5 * 1e-4 = 0.0005 here, as VGG's own CNN_S deploy files do.")


@dataclass(frozen=True)
class NetOptions:
    """Everything that varies a generated net; the defaults are the paper's ImageNet setting."""
    num_classes: int = 1000
    crop_size: int = 224
    batch_size: int = 256            # TRAIN batch per iteration (the solver's iter_size makes up the global 256)
    test_batch_size: int = 50
    deploy_batch_size: int = 10      # the official deploy files' input_dim
    width_divisor: int = 1
    init: str = "gaussian"           # gaussian std 0.01 | xavier | msra (Caffe's FAN_IN variants)
    data: str = "lmdb"
    train_source: str = ""           # "" -> DEFAULT_SOURCES[data]
    val_source: str = ""
    mean_value: tuple[float, ...] = field(default=MEAN_BGR)
    scale: str = "256"               # training scale S: "256", "384" or "256-512"
    test_scale: int = 0              # Q; 0 -> S, or (S_min + S_max) / 2 when jittered (Sect. 4.1)
    color_shift_std: float = 0.1
    input_scale: float = 1.0         # transform_param.scale, applied after the mean (Caffe); 1 = pixels in 0-255
    task: str = "classification"     # or "localization" (Appendix A)
    regression: str = "scr"          # localization: scr | pcr
    finetune: str = "all"            # localization: all | fc

    @property
    def localization(self) -> bool:
        return self.task == "localization"

    def last_fc_width(self) -> int:
        """Classes, or the box outputs of Appendix A: 4 (SCR) or 4 per class (PCR)."""
        if not self.localization:
            return self.num_classes
        return 4 if self.regression == "scr" else 4 * self.num_classes

    def validate(self) -> None:
        """Reject impossible option combinations with a message naming the option."""
        for name in ("num_classes", "crop_size", "batch_size", "test_batch_size", "deploy_batch_size",
                     "width_divisor"):
            if int(getattr(self, name)) < 1:
                raise VGGProtoError(f"--{name.replace('_', '-')} must be a positive integer, got {getattr(self, name)}")
        if self.data not in DATA_BACKENDS:
            raise VGGProtoError(f"unknown --data '{self.data}'; supported: {', '.join(DATA_BACKENDS)}")
        if self.init not in INITS:
            raise VGGProtoError(f"unknown --init '{self.init}'; supported: {', '.join(INITS)}")
        if len(self.mean_value) not in (1, 3):
            raise VGGProtoError(f"--mean-value takes 1 or 3 numbers (BGR), got {len(self.mean_value)}")
        for name, allowed in (("task", TASKS), ("regression", REGRESSIONS), ("finetune", FINETUNES)):
            if getattr(self, name) not in allowed:
                raise VGGProtoError(f"unknown --{name} '{getattr(self, name)}'; supported: {', '.join(allowed)}")
        if self.input_scale <= 0:
            raise VGGProtoError(f"--input-scale must be positive, got {self.input_scale}")
        if self.test_scale < 0 or self.color_shift_std < 0:
            raise VGGProtoError("--test-scale and the colour shift std must not be negative")
        try:
            parse_scale(self.scale)
        except ValueError as exc:
            raise VGGProtoError(f"--scale: {exc}") from None


# --------------------------------------------------------------------------------------------------------------
# Single layers
# --------------------------------------------------------------------------------------------------------------

def _layer(name: str, type_: str, bottom: str, top: str) -> caffe_pb2.LayerParameter:
    return caffe_pb2.LayerParameter(name=name, type=type_, bottom=[bottom], top=[top])


def _fill(param, init: str) -> None:
    """Weight filler of the chosen init, bias constant 0 (Sect. 3.1: "the biases were initialised with zero")."""
    if init == "gaussian":
        # The paper says "10^-2 variance" but std 0.01 is what Caffe re-implementations (and this brief) use.
        param.weight_filler.type, param.weight_filler.std = "gaussian", 0.01
    else:
        param.weight_filler.type = init
    param.bias_filler.type, param.bias_filler.value = "constant", 0.0


def _conv(name: str, bottom: str, width: int, kernel: int, pad: int, fill: str | None) -> caffe_pb2.LayerParameter:
    layer = _layer(name, "Convolution", bottom, name)
    param = layer.convolution_param
    param.num_output = width
    if pad:
        param.pad.append(pad)
    param.kernel_size.append(kernel)
    if fill:
        _fill(param, fill)
    return layer


def _inner_product(name: str, bottom: str, width: int, fill: str | None) -> caffe_pb2.LayerParameter:
    layer = _layer(name, "InnerProduct", bottom, name)
    layer.inner_product_param.num_output = width
    if fill:
        _fill(layer.inner_product_param, fill)
    return layer


def _in_place(name: str, type_: str, blob: str) -> caffe_pb2.LayerParameter:
    return _layer(name, type_, blob, blob)


def _dropout(name: str, blob: str) -> caffe_pb2.LayerParameter:
    layer = _in_place(name, "Dropout", blob)
    layer.dropout_param.dropout_ratio = 0.5
    return layer


def _lrn(name: str, bottom: str) -> caffe_pb2.LayerParameter:
    layer = _layer(name, "LRN", bottom, name)
    param = layer.lrn_param
    param.local_size, param.alpha, param.beta, param.k = LRN_LOCAL_SIZE, LRN_ALPHA_CAFFE, LRN_BETA, LRN_K
    return layer


def _maxpool(name: str, bottom: str) -> caffe_pb2.LayerParameter:
    layer = _layer(name, "Pooling", bottom, name)
    param = layer.pooling_param
    param.pool, param.kernel_size, param.stride = caffe_pb2.PoolingParameter.MAX, 2, 2
    return layer


def _input(shape: tuple[int, ...]) -> caffe_pb2.LayerParameter:
    # Named "input" as Caffe's UpgradeNetInput names the layer made from the official V1 `input:` fields.
    layer = caffe_pb2.LayerParameter(name="input", type="Input", top=["data"])
    layer.input_param.shape.add().dim.extend(shape)
    return layer


# --------------------------------------------------------------------------------------------------------------
# The loop over Table 1
# --------------------------------------------------------------------------------------------------------------

def trunk(config: str, kind: str, opts: NetOptions) -> tuple[Commented, str]:
    """The layers of Table 1's column ``config`` from ``data`` to the last FC; returns (layers, last top)."""
    tokens = [parse_token(text) for text in TABLE1[config]]
    fc_total = sum(token.kind == "fc" for token in tokens)
    fill = opts.init if kind == "train_val" else None
    out: Commented = []
    bottom, block, index, fc_seen, spatial = "data", 1, 0, 0, opts.crop_size
    for token in tokens:
        if token.kind == "conv":
            index += 1
            name = f"conv{block}_{index}"
            width, pad = _narrow(token.width, opts), (token.kernel - 1) // 2
            conv = _conv(name, bottom, width, token.kernel, pad, fill)
            spatial = conv_output_size(spatial, token.kernel, 1, pad)   # "same" for Table 1's odd kernels
            if kind == "train_val" and opts.localization and opts.finetune == "fc":
                _freeze(conv)
            out.append((conv, ""))
            out.append((_in_place(f"relu{block}_{index}", "ReLU", name), ""))
            bottom = name
        elif token.kind == "lrn":
            name = f"norm{block}"
            out.append((_lrn(name, bottom), LRN_COMMENT))
            bottom = name
        elif token.kind == "pool":
            name = f"pool{block}"
            out.append((_maxpool(name, bottom), ""))
            bottom, block, index = name, block + 1, 0
            spatial = pool_output_size(spatial, 2, 2)  # Caffe: pooling_layer.cpp ceil rule, 2×2 stride 2
        elif token.kind == "fc":
            fc_seen += 1
            last = fc_seen == fc_total
            width = opts.last_fc_width() if last else _narrow(token.width, opts)
            number = 5 + fc_seen
            name = LOC_LAYER if last and opts.localization else f"fc{number}"
            layers, bottom = _fc(name, bottom, width, kind, fill, spatial if fc_seen == 1 else 1)
            out.extend(layers)
            if not last:
                out.append((_in_place(f"relu{number}", "ReLU", bottom), ""))
                out.append((_dropout(f"drop{number}", bottom), ""))
    return out, bottom


def _narrow(width: int, opts: NetOptions) -> int:
    return max(1, width // opts.width_divisor)


def _freeze(conv: caffe_pb2.LayerParameter) -> None:
    """``--finetune fc`` (Appendix A): weights and bias of a conv layer stay as initialised (lr_mult 0)."""
    for _ in range(2):
        spec = conv.param.add()
        spec.lr_mult, spec.decay_mult = 0, 0


def _fc(name: str, bottom: str, width: int, kind: str, fill: str | None, kernel: int) -> tuple[Commented, str]:
    if kind != "dense":
        return [(_inner_product(name, bottom, width, fill), "")], name
    conv_name = DENSE_LAYER_NAMES.get(name, f"{name}-conv")
    comment = ""
    if kernel > 1:
        comment = (f"{name} as a {kernel}x{kernel} convolution (Sect. 3.2): its InnerProduct weights, reshaped to\n"
                   f"(num_output, C, {kernel}, {kernel}) in C order, are this layer's weights.")
    return [(_conv(conv_name, bottom, width, kernel, 0, None), comment)], conv_name


# --------------------------------------------------------------------------------------------------------------
# Heads and tails per kind
# --------------------------------------------------------------------------------------------------------------

def _data_layer(phase: int, opts: NetOptions) -> tuple[caffe_pb2.LayerParameter, str]:
    train = phase == caffe_pb2.TRAIN
    defaults = LOC_SOURCES if opts.localization and opts.data != "hdf5" else DEFAULT_SOURCES[opts.data]
    source = (opts.train_source if train else opts.val_source) or defaults[0 if train else 1]
    batch = opts.batch_size if train else opts.test_batch_size
    layer = caffe_pb2.LayerParameter(name="data", top=["data", "label"])
    layer.include.add().phase = phase
    if opts.localization:
        return _box_data_layer(layer, train, source, batch, opts)
    if opts.data == "hdf5":
        layer.type = "HDF5Data"
        layer.hdf5_data_param.source, layer.hdf5_data_param.batch_size = source, batch
        layer.hdf5_data_param.shuffle = train
        # Caffe: src/caffe/layers/hdf5_data_layer.cpp refuses transform_param
        comment = ("HDF5Data applies no transform_param in Caffe (hdf5_data_layer.cpp refuses it): the HDF5 files\n"
                   f"must hold preprocessed {opts.crop_size}x{opts.crop_size} BGR crops, mean already subtracted.")
        return layer, comment if train else ""
    if opts.data == "lmdb":
        layer.type = "Data"
        param = layer.data_param
        param.source, param.batch_size, param.backend = source, batch, caffe_pb2.DataParameter.LMDB
    else:
        layer.type = "ImageData"
        param = layer.image_data_param
        param.source, param.batch_size = source, batch
        param.shuffle = train
    _transform(layer.transform_param, train, opts)
    return layer, _augmentation_comment(train, opts)


def _box_data_layer(layer: caffe_pb2.LayerParameter, train: bool, source: str, batch: int,
                    opts: NetOptions) -> tuple[caffe_pb2.LayerParameter, str]:
    """Appendix A's data: image, class (PCR only) and ground-truth box ``(cx, cy, w, h)`` relative to the crop."""
    del layer.top[:]
    layer.top.extend(["data", "label", "box"] if opts.regression == "pcr" else ["data", "box"])
    if opts.data == "hdf5":
        layer.type = "HDF5Data"
        layer.hdf5_data_param.source, layer.hdf5_data_param.batch_size = source, batch
        layer.hdf5_data_param.shuffle = train
        return layer, ("HDF5 files with datasets " + ", ".join(layer.top) + ": preprocessed crops (no transform in\n"
                       "Caffe) and boxes (cx, cy, w, h) relative to the crop.") if train else ""
    layer.type = "BoxData"
    param = layer.image_data_param
    param.source, param.batch_size = source, batch
    param.shuffle = train
    _transform(layer.transform_param, train, opts)
    comment = ("BoxData is a vggproto layer (not BVLC Caffe): lines '<image> <class> <x1> <y1> <x2> <y2>' (pixel\n"
               "corners); the box follows the rescale/crop/mirror and becomes (cx, cy, w, h) / crop side.\n")
    return layer, comment + _augmentation_comment(train, opts)


def _transform(param: caffe_pb2.TransformationParameter, train: bool, opts: NetOptions) -> None:
    param.mirror = train
    param.crop_size = opts.crop_size
    param.mean_value.extend(opts.mean_value)
    if opts.input_scale != 1.0:
        param.scale = opts.input_scale
    if opts.scale == NO_RESCALE:  # BVLC-only transform: no extension field at all
        return
    aug = param.vgg_augmentation_param
    if train:
        aug.scale_min, aug.scale_max = parse_scale(opts.scale)
        aug.color_shift_std = opts.color_shift_std
    else:
        aug.test_scale = opts.test_scale or test_scale_for(opts.scale)


def _augmentation_comment(train: bool, opts: NetOptions) -> str:
    ext = "vgg_augmentation_param is a vggproto extension (field 1000), not BVLC Caffe:"
    if opts.scale == NO_RESCALE:
        return ""
    if not train:
        return (f"{ext} TEST images are isotropically\nrescaled so the smallest side is Q = test_scale, then "
                f"centre-cropped to {opts.crop_size} (Sect. 3.2, Q as in Sect. 4.1).")
    low, high = parse_scale(opts.scale)
    s = f"S = {low}" if low == high else f"S drawn per image from [{low}; {high}]"
    return (f"{ext} each TRAIN image is isotropically\nrescaled so its smallest side is {s}, randomly cropped to "
            f"{opts.crop_size}, randomly mirrored and\ncolour-shifted along the RGB principal components "
            f"(std {opts.color_shift_std:g}), as in Sect. 3.1.")


def train_val_head(opts: NetOptions) -> Commented:
    return [_data_layer(caffe_pb2.TRAIN, opts), _data_layer(caffe_pb2.TEST, opts)]


def train_val_tail(scores: str, num_classes: int) -> Commented:
    """Softmax loss and TEST accuracies; no top-5 accuracy below 6 classes (Caffe's accuracy_layer.cpp refuses
    top_k > classes, and top-5 of 5 is always right)."""
    loss = caffe_pb2.LayerParameter(name="loss", type="SoftmaxWithLoss", bottom=[scores, "label"], top=["loss"])
    out: Commented = [(loss, "")]
    for name, top_k in (("accuracy_top1", 1), ("accuracy_top5", 5))[:2 if num_classes > 5 else 1]:
        layer = caffe_pb2.LayerParameter(name=name, type="Accuracy", bottom=[scores, "label"], top=[name])
        layer.include.add().phase = caffe_pb2.TEST
        if top_k != 1:
            layer.accuracy_param.top_k = top_k
        out.append((layer, ""))
    return out


def localization_tail(boxes: str, opts: NetOptions) -> Commented:
    """Appendix A: "we replace the logistic regression objective with a Euclidean loss"; for PCR the loss sees
    only the ground-truth class's four outputs (ClassBox, a vggproto layer), the others get no gradient."""
    out: Commented = []
    if opts.regression == "pcr":
        select = caffe_pb2.LayerParameter(name="class_box", type="ClassBox", bottom=[boxes, "label"],
                                          top=["class_box"])
        out.append((select, "Per-class regression: the 4 outputs of the ground-truth class (vggproto ClassBox layer;\n"
                            "the other outputs get an exactly zero gradient)."))
        boxes = "class_box"
    loss = caffe_pb2.LayerParameter(name="loss", type="EuclideanLoss", bottom=[boxes, "box"], top=["loss"])
    out.append((loss, ""))
    return out


def softmax_tail(scores: str) -> Commented:
    return [(_layer("prob", "Softmax", scores, "prob"), "")]


def build_commented(config: str, kind: str, opts: NetOptions) -> tuple[caffe_pb2.NetParameter, list[str]]:
    """The net and, per layer, the comment to print above it."""
    if config not in TABLE1:
        raise VGGProtoError(f"unknown config '{config}'; supported: {', '.join(TABLE1)}")
    if kind not in KINDS:
        raise VGGProtoError(f"unknown net kind '{kind}'; supported: {', '.join(KINDS)}")
    opts.validate()
    body, scores = trunk(config, kind, opts)
    if kind == "train_val":
        tail = localization_tail(scores, opts) if opts.localization else train_val_tail(scores, opts.num_classes)
        layers = train_val_head(opts) + body + tail
    else:
        shape = (opts.deploy_batch_size if kind == "deploy" else 1, 3, opts.crop_size, opts.crop_size)
        layers = [(_input(shape), "")] + body + ([] if opts.localization else softmax_tail(scores))
    name = f"VGG_{config}_loc_{opts.regression}" if opts.localization else f"VGG_{config}"
    net = caffe_pb2.NetParameter(name=name)
    net.layer.extend(layer for layer, _ in layers)
    return net, [comment for _, comment in layers]
