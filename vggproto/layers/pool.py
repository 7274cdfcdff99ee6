"""Pooling and SPP with Caffe's exact geometry (never PyTorch's ceil_mode rules).

Caffe: src/caffe/layers/pooling_layer.cpp — output = ceil (or floor) of (H + 2p − k)/s + 1, then, only when a
pad is set, drop the last window if it would start at or beyond H + p.  MAX ignores padding and can emit the
argmax mask; AVE divides by the window clipped to [−p, H + p) (padding counts, cells beyond do not).  The
implementation pads explicitly to exactly the cells Caffe reads, so torch's pooling kernels see no partial
windows and the gradients are Caffe's.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F

from vggproto.caffe.proto import caffe_pb2
from vggproto.caffe.shapes import pool_output_size, pool_rounds_up
from vggproto.layers.base import TRACED
from vggproto.layers.common import axis_values, expect_tops, opt
from vggproto.layers.registry import CaffeLayer, LayerSpec, register

P = caffe_pb2.PoolingParameter
FLT_MIN = 1.1754943508222875e-38


def _pad_to(x: torch.Tensor, kernel, stride, pad, out, value: float) -> torch.Tensor:
    """Pad (or crop) H and W so that plain stride-s windows give exactly ``out`` outputs starting at −pad."""
    right = [(o - 1) * s + k - n - p for o, s, k, n, p in zip(out, stride, kernel, x.shape[-2:], pad)]
    if not any(right) and not any(pad):
        return x
    return F.pad(x, (pad[1], right[1], pad[0], right[0]), value=value)


def _ave_divisor(sizes, kernel, stride, pad, out, device) -> torch.Tensor:
    # Caffe: pooling_layer.cpp — pool_size = (hend − hstart)(wend − wstart), hend = min(hstart + k, H + pad)
    axes = []
    for n, k, s, p, o in zip(sizes, kernel, stride, pad, out):
        axes.append([min(i * s - p + k, n + p) - (i * s - p) for i in range(o)])
    h = torch.tensor(axes[0], dtype=torch.float32, device=device)
    w = torch.tensor(axes[1], dtype=torch.float32, device=device)
    return h.view(-1, 1) * w.view(1, -1)


def _window_sums(xp: torch.Tensor, kernel: Sequence[int], stride: Sequence[int]) -> torch.Tensor:
    """Σ of every (already padded) window.  Eagerly ``divisor_override=1``; in an ONNX export, which drops the
    override (AveragePool divides by the window anyway), the mean times the window area — the same sums to
    float rounding, so the exported graph computes Caffe's AVE/STOCHASTIC values (pooling_layer.cpp)."""
    if torch.onnx.is_in_onnx_export():
        return F.avg_pool2d(xp, kernel, stride) * float(kernel[0] * kernel[1])
    return F.avg_pool2d(xp, kernel, stride, divisor_override=1)


def _torch_geometry(kernel: Sequence[int], stride: Sequence[int], pad: Sequence[int], ceil: bool) -> bool:
    """Whether torch's pooling has Caffe's geometry at every input size: rounding down, always; rounding up,
    torch drops a last window that starts beyond H + pad, which Caffe does only with a pad (pooling_layer.cpp
    Reshape) — the same rule unless pad is 0 and the stride exceeds the kernel.  torch takes pads up to half
    the kernel."""
    return all((p > 0 or s <= k or not ceil) and 2 * p <= k for k, s, p in zip(kernel, stride, pad))


def _export_pool(x: torch.Tensor, method: int, kernel: Sequence[int], stride: Sequence[int],
                 pad: Sequence[int], ceil: bool) -> torch.Tensor:
    """MAX / AVE pooling as one ONNX op (rounding as the layer does) whose output size follows the input's (the
    explicit pads of :func:`pool2d` are numbers a trace would freeze).  AVE counts the padding but not the cells
    beyond it, as Caffe's pool_size = (hend − hstart)(wend − wstart) with hend = min(hstart + k, H + pad) does."""
    if method == P.MAX:
        return F.max_pool2d(x, kernel, stride, pad, ceil_mode=ceil)
    return F.avg_pool2d(x, kernel, stride, pad, ceil_mode=ceil, count_include_pad=True)


def pool2d(x: torch.Tensor, method: int, kernel: Sequence[int], stride: Sequence[int], pad: Sequence[int],
           out: Sequence[int], train: bool, mask: bool = False,
           ceil: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Pool the last two axes of a 4-D ``x`` to ``out`` cells (``ceil``: the layer's rounding, which gave
    ``out``); returns (top, mask or None)."""
    if torch.onnx.is_in_onnx_export() and not mask and method != P.STOCHASTIC and \
            _torch_geometry(kernel, stride, pad, ceil):
        return _export_pool(x, method, kernel, stride, pad, ceil), None
    if method == P.MAX:
        xp = _pad_to(x, kernel, stride, pad, out, float("-inf"))
        if not mask:
            return F.max_pool2d(xp, kernel, stride), None
        y, idx = F.max_pool2d(xp, kernel, stride, return_indices=True)
        width_p = xp.shape[-1]
        rows, cols = idx // width_p - pad[0], idx % width_p - pad[1]
        return y, (rows * x.shape[-1] + cols).to(x.dtype)   # Caffe: index into the bottom's H×W plane
    if method == P.AVE:
        xp = _pad_to(x, kernel, stride, pad, out, 0.0)
        sums = _window_sums(xp, kernel, stride)
        return sums / _ave_divisor(x.shape[-2:], kernel, stride, pad, out, x.device), None
    return _stochastic(x, kernel, stride, pad, out, train), None


def _stochastic(x: torch.Tensor, kernel, stride, pad, out, train: bool) -> torch.Tensor:
    xp = _pad_to(x, kernel, stride, pad, out, 0.0)
    if not train:
        # Caffe: pooling_layer.cu StoPoolForwardTest — Σx² / (FLT_MIN + Σx) over the window
        sums = _window_sums(xp, kernel, stride)
        squares = _window_sums(xp * xp, kernel, stride)
        return squares / (sums + FLT_MIN)
    # Caffe: pooling_layer.cu StoPoolForwardTrain — pick a cell with probability x / Σx (inputs assumed ≥ 0)
    n, c = x.shape[:2]
    windows = F.unfold(xp.reshape(n * c, 1, *xp.shape[-2:]), kernel, stride=stride)
    total = windows.sum(dim=1, keepdim=True)
    threshold = torch.rand(total.shape, device=x.device, dtype=x.dtype) * total
    pick = (windows.detach().cumsum(dim=1) < threshold).sum(dim=1, keepdim=True)
    pick = pick.clamp(max=windows.shape[1] - 1)
    return windows.gather(1, pick).reshape(n, c, *out)


def stochastic_refusal(pool: int, phase: str) -> str | None:
    """Why TRAIN-phase STOCHASTIC pooling cannot be exported: it draws random cells an ONNX graph cannot
    reproduce (Caffe: pooling_layer.cu StoPoolForwardTrain); None for every other method or phase."""
    if phase == "TRAIN" and pool == P.STOCHASTIC:
        return "TRAIN-phase STOCHASTIC pooling draws random cells; export the TEST phase"
    return None


@register("Pooling")
class Pooling(CaffeLayer):
    """Caffe: src/caffe/layers/pooling_layer.cpp — MAX (+ argmax mask top), AVE, STOCHASTIC; global pooling."""

    n_bottoms = 1
    bottom_ndim = 4
    onnx = TRACED
    backward = True

    @classmethod
    def onnx_refusal(cls, param: caffe_pb2.LayerParameter, phase: str) -> str | None:
        return stochastic_refusal(param.pooling_param.pool, phase)

    def __init__(self, spec: LayerSpec):
        super().__init__(spec)
        p = spec.param.pooling_param
        expect_tops(spec, 1, 2 if p.pool == P.MAX else 1)
        shape = spec.bottom_shapes[0]
        self.method, self.train_phase = p.pool, spec.train
        if p.global_pooling:
            if p.HasField("kernel_size") or p.HasField("kernel_h") or p.HasField("kernel_w"):
                raise spec.error("with global_pooling: true the kernel size cannot be specified")
            if p.pad or p.pad_h or p.pad_w or p.stride != 1 or opt(p, "stride_h") or opt(p, "stride_w"):
                raise spec.error("with global_pooling: true only pad 0 and stride 1 are supported")
            self.kernel, self.stride, self.pad = [shape[2], shape[3]], [1, 1], [0, 0]
        else:
            kernel = [p.kernel_size] if p.HasField("kernel_size") else []
            self.kernel = axis_values(spec, kernel, opt(p, "kernel_h"), opt(p, "kernel_w"), 2, None, "kernel_size")
            self.stride = axis_values(spec, [p.stride], opt(p, "stride_h"), opt(p, "stride_w"), 2, 1, "stride")
            has_hw = p.HasField("pad_h") or p.HasField("pad_w")
            self.pad = axis_values(spec, [p.pad], opt(p, "pad_h") if has_hw else None,
                                   opt(p, "pad_w") if has_hw else None, 2, 0, "pad")
        for field, values in (("kernel_size", self.kernel), ("stride", self.stride)):
            if min(values) <= 0:
                raise spec.error(f"pooling_param.{field} must be positive, got {values}")
        if any(self.pad):
            if self.method not in (P.MAX, P.AVE):
                raise spec.error("padding is implemented only for MAX and AVE pooling")
            if self.pad[0] >= self.kernel[0] or self.pad[1] >= self.kernel[1]:
                raise spec.error(f"pad {self.pad} must be smaller than the kernel {self.kernel}")
        ceil = pool_rounds_up(p)
        # Caffe: pooling_layer.cpp Reshape (the arithmetic is vggproto.caffe.shapes.pool_output_size)
        self.out = [pool_output_size(shape[2 + i], self.kernel[i], self.stride[i], self.pad[i], ceil,
                                     any(self.pad)) for i in range(2)]
        if min(self.out) <= 0:
            i = 0 if self.out[0] <= 0 else 1
            size, axis = shape[2 + i], ("height", "width")[i]
            raise spec.error(f"pooling_param.kernel_size {self.kernel[i]} is larger than the padded input {axis}: "
                             f"{size} + 2*pad {self.pad[i]} = {size + 2 * self.pad[i]}; rule: output "
                             f"ceil((input + 2*pad - kernel) / stride) + 1 must be >= 1")
        self.ceil = ceil
        top = (shape[0], shape[1], *self.out)
        self.top_shapes = [top] * len(spec.param.top)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        want_mask = len(self.top_shapes) == 2
        global_ = self.spec.param.pooling_param.global_pooling
        if global_ and not want_mask and self.method != P.STOCHASTIC and torch.onnx.is_in_onnx_export():
            # the same window over the whole plane as a reduction, so an ONNX graph takes any height and width
            # (Caffe: pooling_layer.cpp global_pooling, kernel = bottom H x W, stride 1, pad 0)
            reduce = torch.amax if self.method == P.MAX else torch.mean
            return (reduce(x, dim=(2, 3), keepdim=True),)
        out = self.out
        if tuple(x.shape[-2:]) != tuple(self.spec.bottom_shapes[0][-2:]):   # reshaped input: recompute
            kernel = list(x.shape[-2:]) if self.spec.param.pooling_param.global_pooling else self.kernel
            out = [pool_output_size(x.shape[2 + i], kernel[i], self.stride[i], self.pad[i], self.ceil,
                                    any(self.pad)) for i in range(2)]
        else:
            kernel = self.kernel
        y, mask = pool2d(x, self.method, kernel, self.stride, self.pad, out, self.train_phase, want_mask,
                         self.ceil)
        return (y, mask.detach()) if want_mask else (y,)


@register("SPP")
class SPP(CaffeLayer):
    """Caffe: src/caffe/layers/spp_layer.cpp — level l pools into 2^l × 2^l bins (kernel ceil(H/bins),
    pad (kernel·bins − H + 1)/2, stride kernel), flattened and concatenated; height 1 gives (N, C, 1, 1)."""

    n_bottoms = 1
    n_tops = 1
    bottom_ndim = 4
    onnx = TRACED
    backward = True

    @classmethod
    def onnx_refusal(cls, param: caffe_pb2.LayerParameter, phase: str) -> str | None:
        return stochastic_refusal(param.spp_param.pool, phase)

    def __init__(self, spec: LayerSpec):
        super().__init__(spec)
        p = spec.param.spp_param
        shape = spec.bottom_shapes[0]
        if p.pyramid_height < 1:
            raise spec.error("spp_param.pyramid_height must be at least 1")
        self.method, self.height, self.train_phase = p.pool, p.pyramid_height, spec.train
        if self.height == 1:
            self.top_shapes = [(shape[0], shape[1], 1, 1)]
        else:
            bins = sum(4 ** level for level in range(self.height))
            self.top_shapes = [(shape[0], shape[1] * bins)]

    @staticmethod
    def _geometry(size: int, bins: int) -> tuple[int, int]:
        kernel = math.ceil(size / bins)
        return kernel, (kernel * bins - size + 1) // 2

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor]:
        pieces = []
        height, width = int(x.shape[2]), int(x.shape[3])   # the kernels follow them: an ONNX graph pins both
        for level in range(self.height):
            bins = 2 ** level
            (kh, ph), (kw, pw) = self._geometry(height, bins), self._geometry(width, bins)
            any_pad = bool(ph or pw)
            out = [pool_output_size(height, kh, kh, ph, True, any_pad),
                   pool_output_size(width, kw, kw, pw, True, any_pad)]
            y, _ = pool2d(x, self.method, [kh, kw], [kh, kw], [ph, pw], out, self.train_phase)
            pieces.append(y)
        if self.height == 1:
            return (pieces[0],)
        return (torch.cat([piece.flatten(1) for piece in pieces], dim=1),)
