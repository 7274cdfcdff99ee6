"""The segmentation forks' layers: BN (SegNet/ENet and PSPNet forms), Upsample (SegNet/ENet max-unpooling and
YOLOv3 nearest upsampling) and Interp (PSPNet / DeepLab v2 bilinear resizing).

Two pairs of forks gave one message name two meanings (``BNParameter``, ``UpsampleParameter``), so each layer
decides whose semantics apply: BN from the fields set, the net's dialect and its ``param`` count
(:func:`bn_form`), Upsample from its number of bottoms.  The facts (formulas, blob order, defaults, source files)
are in ``docs/notes/forks-schema.md`` §2 SegNet, §3 ENet, §4 PSPNet and §7f YOLOv3.  Backward is autograd except
where the fork's hand-written backward is not the derivative of its forward (PSPNet BN outside frozen TRAIN,
SegNet unpooling with repeated mask indices): small autograd Functions reproduce those.
"""
from __future__ import annotations

import types

import torch
import torch.nn.functional as F

from vggproto.caffe.proto import caffe_pb2
from vggproto.errors import DataError
from vggproto.layers.base import TRACED
from vggproto.layers.common import blob, expect_tops
from vggproto.layers.registry import CaffeLayer, LayerSpec, register

BNP = caffe_pb2.BNParameter
SEGNET, PSPNET = "segnet", "pspnet"
#: SegNet: src/caffe/layers/bn_layer.cpp — var_eps_ = 1e-9, hard-coded (no proto field)
SEGNET_EPS = 1e-9
#: PSPNet: src/caffe/layers/cudnn_bn_layer.cpp — eps is raised to cuDNN's CUDNN_BN_MIN_EPSILON
CUDNN_BN_MIN_EPSILON = 1e-5
_PSPNET_FIELDS = ("slope_filler", "bias_filler", "momentum", "eps", "frozen", "engine")
_SEGNET_FIELDS = ("scale_filler", "shift_filler", "bn_mode")
_UNPOOL_FIELDS = ("scale_h", "scale_w", "pad_out_h", "pad_out_w", "upsample_h", "upsample_w")


def _channel_view(x: torch.Tensor) -> tuple[int, ...]:
    return (1, -1) + (1,) * (x.dim() - 2)


def _stat_axes(x: torch.Tensor) -> list[int]:
    return [0] + list(range(2, x.dim()))


def bn_form(spec: LayerSpec) -> str:
    """Which fork's ``BN`` this layer is: ``"pspnet"`` (4 blobs, running statistics) or ``"segnet"`` (2 blobs).

    The forks share the type name and the message name but no field name, so the fields set decide first; a BN
    with no bn_param fields follows the net's dialect (pspnet/deeplab: PSPNet, segnet/enet: SegNet); in a net
    whose dialect says nothing (bvlc or another fork's) the number of ``param`` specs decides (PSPNet deploys
    give 4, SegNet/ENet nets 2); otherwise SegNet's form, the older one.
    """
    p = spec.param.bn_param
    pspnet = [f for f in _PSPNET_FIELDS if p.HasField(f)]
    segnet = [f for f in _SEGNET_FIELDS if p.HasField(f)]
    if pspnet and segnet:
        raise spec.error(f"bn_param mixes SegNet/ENet fields ({', '.join(segnet)}) with PSPNet fields "
                         f"({', '.join(pspnet)}); use one fork's fields")
    if pspnet or segnet:
        return PSPNET if pspnet else SEGNET
    if spec.dialect in ("pspnet", "deeplab", "segnet", "enet"):
        return PSPNET if spec.dialect in ("pspnet", "deeplab") else SEGNET
    return PSPNET if len(spec.param.param) == 4 else SEGNET


class _NormalizeBatchGrad(torch.autograd.Function):
    """x̂ = (x − mean)·inv_std whose backward is the batch-statistics formula
    inv_std·(g − mean(g) − x̂·mean(g·x̂)) whatever the statistics were (PSPNet's Backward_cpu when not frozen)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, mean: torch.Tensor, inv_std: torch.Tensor) -> torch.Tensor:
        xhat = (x - mean) * inv_std
        ctx.save_for_backward(xhat, inv_std)
        return xhat

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        xhat, inv_std = ctx.saved_tensors
        axes = _stat_axes(grad)
        centred = grad - grad.mean(dim=axes, keepdim=True)
        return (centred - xhat * (grad * xhat).mean(dim=axes, keepdim=True)) * inv_std, None, None


@register("BN")
class BN(CaffeLayer):
    """SegNet / ENet (src/caffe/layers/bn_layer.cpp of alexgkendall/caffe-segnet, TimoSaemann/caffe-enet) or
    PSPNet (src/caffe/layers/bn_layer.cpp of hszhao/PSPNet) batch normalisation; :func:`bn_form` picks the form.

    SegNet form: blobs scale, shift (1, C, 1, 1); ``bn_mode: LEARN`` normalises with the batch statistics in
    every phase (eps 1e-9) and can output them as tops 1 and 2, ``INFERENCE`` is scale·x + shift.
    PSPNet form: blobs slope, bias, running mean, running variance (1, C, 1, 1); TEST or ``frozen`` uses the
    running statistics, TRAIN the batch ones and updates r ← momentum·r + (1 − momentum)·batch.  ``engine:
    DEFAULT`` follows the CAFFE engine (what a CPU build of the fork runs); ``CUDNN`` raises eps to 1e-5.
    """

    n_bottoms = 1
    onnx = TRACED
    backward = True

    def __init__(self, spec: LayerSpec):
        super().__init__(spec)
        shape = tuple(spec.bottom_shapes[0])
        if not 2 <= len(shape) <= 4:
            raise spec.error(f"BN needs a bottom with 2 to 4 axes (N, C[, H, W]), got shape {shape}")
        self.form = bn_form(spec)
        channels = (1, shape[1], 1, 1)
        if self.form == PSPNET:
            self._setup_pspnet(spec, channels)
        else:
            self._setup_segnet(spec, channels)
        self.top_shapes = [shape] + [channels] * (len(spec.param.top) - 1)

    def _setup_segnet(self, spec: LayerSpec, channels: tuple[int, ...]) -> None:
        expect_tops(spec, 1, 3)   # top 1: batch mean, top 2: batch variance
        p = spec.param.bn_param
        self.learn = p.bn_mode == BNP.LEARN
        self.add_blob(channels, p.scale_filler)
        self.add_blob(channels, p.shift_filler)

    def _setup_pspnet(self, spec: LayerSpec, channels: tuple[int, ...]) -> None:
        expect_tops(spec, 1)
        p = spec.param.bn_param
        self.frozen, self.momentum, self.eps = p.frozen, p.momentum, p.eps
        if p.engine == BNP.CUDNN:
            self.eps = max(self.eps, CUDNN_BN_MIN_EPSILON)
        self.running = p.frozen or not spec.train
        self.add_blob(channels, p.slope_filler, learnable=not p.frozen)
        self.add_blob(channels, p.bias_filler, learnable=not p.frozen)
        # PSPNet: src/caffe/layers/bn_layer.cpp — running mean 0, running variance 1 if frozen else 0
        self.add_blob(channels, learnable=False)
        self.add_blob(channels, caffe_pb2.FillerParameter(type="constant", value=1.0 if p.frozen else 0.0),
                      learnable=False)
        # PSPNet: src/caffe/layers/bn_layer.cpp LayerSetUp — pads the layer's own definition to 4 param specs
        # and sets lr_mult = decay_mult = 0 on the statistics (on all four when frozen); Caffe's Net reads
        # that copy, so the solver never updates them
        while len(spec.param.param) < 4:
            spec.param.param.add()
        for index in range(4) if p.frozen else (2, 3):
            spec.param.param[index].lr_mult = 0.0
            spec.param.param[index].decay_mult = 0.0

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if self.form == PSPNET:
            return (self._pspnet(x),)
        return self._segnet(x)

    def _segnet(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        view = _channel_view(x)
        scale, shift = blob(self, 0).reshape(view), blob(self, 1).reshape(view)
        extra = len(self.top_shapes) - 1
        if not self.learn:
            # SegNet: src/caffe/layers/bn_layer.cpp INFERENCE — statistics already folded into scale and shift;
            # the mean/variance tops are reshaped but never written (a fresh Caffe blob is zero)
            zeros = [torch.zeros(self.top_shapes[1], dtype=x.dtype, device=x.device) for _ in range(extra)]
            return (x * scale + shift, *zeros)
        axes = _stat_axes(x)
        mean = x.mean(dim=axes, keepdim=True)
        # SegNet: src/caffe/layers/bn_layer.cpp LEARN — batch statistics even in TEST (no phase check),
        # var = E[x²] − E[x]² (biased), eps 1e-9; the statistic tops get no gradient (Backward reads top 0 only)
        var = (x * x).mean(dim=axes, keepdim=True) - mean * mean
        y = (x - mean) / torch.sqrt(var + SEGNET_EPS) * scale + shift
        stats = (mean.detach().reshape(1, -1, 1, 1), var.detach().reshape(1, -1, 1, 1))
        return (y, *stats[:extra])

    def _pspnet(self, x: torch.Tensor) -> torch.Tensor:
        view = _channel_view(x)
        slope, bias = blob(self, 0).reshape(view), blob(self, 1).reshape(view)
        if self.running:
            mean, var = blob(self, 2).detach().reshape(view), blob(self, 3).detach().reshape(view)
        else:
            axes = _stat_axes(x)
            mean = x.detach().mean(dim=axes, keepdim=True)
            var = ((x.detach() - mean) ** 2).mean(dim=axes, keepdim=True)
            self._update(mean, var)
        inv_std = torch.pow(var + self.eps, -0.5)
        if self.frozen:
            # PSPNet: src/caffe/layers/bn_layer.cpp Backward_cpu frozen — bottom diff = top diff·slope/std only
            xhat = (x - mean) * inv_std
        else:
            # PSPNet: src/caffe/layers/bn_layer.cpp Backward_cpu — the batch formula, also in TEST
            xhat = _NormalizeBatchGrad.apply(x, mean, inv_std)
        return xhat * slope + bias

    @torch.no_grad()
    def _update(self, mean: torch.Tensor, var: torch.Tensor) -> None:
        # PSPNet: src/caffe/layers/bn_layer.cpp Forward_cpu — r ← momentum·r + (1 − momentum)·batch (biased var)
        for index, value in ((2, mean), (3, var)):
            target = self.blobs[index]
            target.mul_(self.momentum).add_(value.reshape(target.shape), alpha=1.0 - self.momentum)


class _Unpool(torch.autograd.Function):
    """Scatter each (n, c) plane by its mask (the largest source position wins a repeated index, as Caffe's CPU
    loop writes in order); backward gathers the top diff at every source's index, repeated ones included."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, index: torch.Tensor, size: int) -> torch.Tensor:
        positions = torch.arange(x.shape[1], device=x.device).expand_as(index)
        winner = torch.full((x.shape[0], size), -1, dtype=torch.long, device=x.device)
        winner.scatter_reduce_(1, index, positions, reduce="amax", include_self=True)
        ctx.save_for_backward(index)
        picked = x.gather(1, winner.clamp(min=0))
        return torch.where(winner >= 0, picked, torch.zeros_like(picked))

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        (index,) = ctx.saved_tensors
        return grad.gather(1, index), None, None


@register("Upsample")
class Upsample(CaffeLayer):
    """Two bottoms: SegNet / ENet max-unpooling (src/caffe/layers/upsample_layer.cpp of alexgkendall/caffe-segnet;
    ENet's is identical): bottom 1 is the mask top of a MAX Pooling, each value goes to its flattened index in a
    zero plane of upsample_h × upsample_w, or (deprecated) H·scale_h − pad_out_h × W·scale_w − pad_out_w.
    One bottom: YOLOv3 nearest upsampling (caffe_layers/upsample_layer of ChenYingpeng/darknet2caffe), every cell
    repeated ``scale`` × ``scale``.  That fork's ``scale`` defaults to 1 where the shared schema says 2 (SegNet's
    default), so an unset ``scale`` with one bottom is 1.  The bottoms decide, not the dialect: a YOLOv3 net that
    only sets ``upsample_param.scale`` is read in the first dialect having that field, SegNet's.
    """

    n_bottoms = (1, 2)
    n_tops = 1
    onnx = TRACED
    backward = True

    @classmethod
    def onnx_opset(cls, param: caffe_pb2.LayerParameter) -> int:
        """18 for SegNet max-unpooling (a mask bottom): ScatterElements with reduction="max" keeps Caffe's
        largest source on repeated mask indices."""
        return 18 if len(param.bottom) > 1 else super().onnx_opset(param)

    def __init__(self, spec: LayerSpec):
        super().__init__(spec)
        p = spec.param.upsample_param
        self.unpool = len(spec.bottom_shapes) == 2
        self.top_shapes = [self._unpool_shape(spec, p) if self.unpool else self._nearest_shape(spec, p)]

    def _nearest_shape(self, spec: LayerSpec, p: caffe_pb2.UpsampleParameter) -> tuple[int, ...]:
        shape = tuple(spec.bottom_shapes[0])
        used = [f for f in _UNPOOL_FIELDS if p.HasField(f)]
        if used:
            raise spec.error(f"upsample_param.{used[0]} belongs to SegNet/ENet max-unpooling, which needs two "
                             "bottoms (values and the MAX pooling mask); one bottom allows only 'scale'")
        if len(shape) < 2:
            raise spec.error(f"nearest Upsample needs a bottom with at least 2 axes, got shape {shape}")
        # YOLOv3: darknet2caffe caffe_layers/upsample_layer/upsample_layer.cpp — scale default 1
        self.scale = int(p.scale) if p.HasField("scale") else 1
        if self.scale < 1:
            raise spec.error(f"upsample_param.scale must be at least 1, got {self.scale}")
        return shape[:-2] + (shape[-2] * self.scale, shape[-1] * self.scale)

    def _unpool_shape(self, spec: LayerSpec, p: caffe_pb2.UpsampleParameter) -> tuple[int, ...]:
        values, mask = (tuple(s) for s in spec.bottom_shapes)
        if len(values) != 4 or values != mask:
            raise spec.error(f"max-unpooling needs 4-D values and mask of one shape (N, C, H, W), got {values} "
                             f"and {mask}")
        has = p.HasField
        explicit = has("upsample_h") and has("upsample_w")
        # SegNet: src/caffe/layers/upsample_layer.cpp LayerSetUp — the accepted combinations
        if not (explicit or (not has("scale") and has("scale_h") and has("scale_w"))
                or (not has("scale_h") and not has("scale_w"))):
            raise spec.error("upsample_param needs upsample_h and upsample_w, or (deprecated) scale, or scale_h "
                             "and scale_w without scale")
        if explicit:
            if p.upsample_h <= 1 or p.upsample_w <= 1:
                raise spec.error(f"upsample_param.upsample_h and upsample_w must be > 1, got {p.upsample_h} and "
                                 f"{p.upsample_w}")
            out = (int(p.upsample_h), int(p.upsample_w))
            self.grow = None
        else:
            scales = (p.scale_h, p.scale_w) if has("scale_h") else (p.scale, p.scale)
            if min(scales) <= 1:
                raise spec.error(f"upsample_param.scale (or scale_h and scale_w) must be > 1, got {scales}")
            for name, pad, scale in (("pad_out_h", p.pad_out_h, scales[0]), ("pad_out_w", p.pad_out_w, scales[1])):
                if pad and scale != 2:
                    raise spec.error(f"upsample_param.{name} needs scale 2 along that axis, got {scale}")
            self.grow = (int(scales[0]), int(scales[1]), int(p.pad_out_h), int(p.pad_out_w))
            out = (values[2] * scales[0] - int(p.pad_out_h), values[3] * scales[1] - int(p.pad_out_w))
        return (values[0], values[1], *out)

    def forward(self, x: torch.Tensor, *mask: torch.Tensor) -> tuple[torch.Tensor]:
        if not self.unpool:
            # YOLOv3: darknet2caffe upsample_layer.cpp — out[h][w] = in[h / scale][w / scale]
            return (x.repeat_interleave(self.scale, dim=-2).repeat_interleave(self.scale, dim=-1),)
        n, c, h, w = x.shape
        out_h, out_w = self.top_shapes[0][2:]
        if self.grow is not None:   # SegNet: upsample_layer.cpp Reshape — H·scale − pad_out from this bottom
            out_h, out_w = h * self.grow[0] - self.grow[2], w * self.grow[1] - self.grow[3]
        index = mask[0].detach().reshape(n * c, h * w).long()   # Caffe: static_cast<int>(mask)
        if torch.onnx.is_in_onnx_export():   # the exporter cannot trace a custom Function; its forward is plain
            ctx = types.SimpleNamespace(save_for_backward=lambda *saved: None)   # ops (ScatterElements max)
            top = _Unpool.forward(ctx, x.reshape(n * c, h * w), index, out_h * out_w)
            return (top.reshape(n, c, out_h, out_w),)
        bad = index[(index < 0) | (index >= out_h * out_w)]
        if bad.numel():
            # SegNet: src/caffe/layers/upsample_layer.cpp — an index outside the top plane is fatal
            raise DataError(f"layer '{self.spec.name}' (Upsample): mask index {int(bad[0])} is outside the "
                            f"{out_h}x{out_w} top plane; upsample_h/upsample_w (or scale) must give the size of "
                            "the pooling layer's bottom")
        top = _Unpool.apply(x.reshape(n * c, h * w), index, out_h * out_w)
        return (top.reshape(n, c, out_h, out_w),)


def interp_size(spec: LayerSpec, height: int, width: int) -> tuple[int, int]:
    """PSPNet / DeepLab v2 src/caffe/layers/interp_layer.cpp Reshape: the output size of an input of
    ``height`` × ``width``, cropped by pad_beg/pad_end, by the first of: shrink_factor alone, zoom_factor alone,
    height and width, shrink then zoom ("set" means given explicitly, so the defaults never count)."""
    p = spec.param.interp_param
    has = p.HasField
    eff = (height + p.pad_beg + p.pad_end, width + p.pad_beg + p.pad_end)
    if min(eff) <= 0:
        raise spec.error(f"interp_param.pad_beg/pad_end ({p.pad_beg}, {p.pad_end}) crop the {height}x{width} "
                         "input to nothing")
    for name in ("shrink_factor", "zoom_factor"):
        if has(name) and getattr(p, name) < 1:
            raise spec.error(f"interp_param.{name} must be at least 1, got {getattr(p, name)}")
    shrunk = tuple((e - 1) // p.shrink_factor + 1 for e in eff)
    if has("shrink_factor") and not has("zoom_factor"):
        out = shrunk
    elif has("zoom_factor") and not has("shrink_factor"):
        out = tuple(e + (e - 1) * (p.zoom_factor - 1) for e in eff)
    elif has("height") and has("width"):
        out = (p.height, p.width)
    elif has("shrink_factor") and has("zoom_factor"):
        out = tuple(s + (s - 1) * (p.zoom_factor - 1) for s in shrunk)
    else:
        raise spec.error("interp_param needs zoom_factor, shrink_factor, or both height and width")
    if min(out) <= 0:
        raise spec.error(f"interp_param gives an empty output {out[0]}x{out[1]}; height and width must be "
                         "positive")
    return int(out[0]), int(out[1])


@register("Interp")
class Interp(CaffeLayer):
    """PSPNet / DeepLab v2 (src/caffe/layers/interp_layer.cpp, src/caffe/util/interp.cpp; identical in both):
    crop by pad_beg/pad_end (≤ 0), then bilinear resizing with aligned corners, src = dst·(in − 1)/(out − 1)."""

    n_bottoms = 1
    n_tops = 1
    bottom_ndim = 4
    onnx = TRACED
    backward = True

    def __init__(self, spec: LayerSpec):
        super().__init__(spec)
        p = spec.param.interp_param
        shape = tuple(spec.bottom_shapes[0])
        for name in ("pad_beg", "pad_end"):
            if getattr(p, name) > 0:
                raise spec.error(f"interp_param.{name} must be <= 0 (Interp only crops), got {getattr(p, name)}")
        self.top_shapes = [shape[:2] + interp_size(spec, shape[2], shape[3])]

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor]:
        p = self.spec.param.interp_param
        out = tuple(self.top_shapes[0][2:])
        if tuple(x.shape[2:]) != tuple(self.spec.bottom_shapes[0][2:]):   # reshaped input: Caffe re-runs Reshape
            out = interp_size(self.spec, x.shape[2], x.shape[3])
        # PSPNet: src/caffe/layers/interp_layer.cpp — the crop starts at (−pad_beg, −pad_beg) on both axes
        start = -p.pad_beg
        crop = x[:, :, start:x.shape[2] + p.pad_end, start:x.shape[3] + p.pad_end]
        if tuple(crop.shape[2:]) == out:
            return (crop.clone(),)   # Caffe: util/interp.cpp — equal sizes are copied
        return (F.interpolate(crop, size=out, mode="bilinear", align_corners=True),)
