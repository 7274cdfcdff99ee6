"""Inference speed options for :class:`vggproto.net.Net`: Winograd 3×3 convolutions, exact ReLU/pooling shortcuts,
channels_last, autocast (bf16/fp16) and ``torch.compile``.

Why a separate step: the interpreter computes exactly what Caffe computes, with the library's direct convolution.
For deployment the same function can be computed faster — on CPU, F(4×4, 3×3) Winograd does a quarter of the
multiplications of the dominant stage (see :mod:`vggproto.fast.winograd`), and on GPU channels_last + bf16 +
compile feed the tensor cores.  These trade exactness (float32 rounding differences of ~1e-6 relative for
Winograd F(4,3), bf16 rounding for autocast) for speed, so they are opt-in and inference-only: a Winograd layer
falls back to the exact path whenever autograd needs a weight gradient.

    fast = optimize_for_inference(net)              # CPU: Winograd on the wide stride-1 3x3 convolutions
    out = fast(data=batch)                          # same outputs as net(data=batch), within tolerance
"""
from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from vggproto.errors import VGGProtoError
from vggproto.fast.fused import ConvReLU, FusedAway, MaxPool2x2, is_plain_max_pool_2x2, relu_after_conv
from vggproto.fast.winograd import SUPPORTED_TILES, transform_weights, winograd_conv2d
from vggproto.layers.common import blob
from vggproto.layers.registry import CaffeLayer
from vggproto.net.interpreter import Net

log = logging.getLogger("vggproto.fast")

AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp16": torch.float16,
                   "float16": torch.float16}


@dataclass(frozen=True)
class FastOptions:
    """What :func:`optimize_for_inference` changes.  ``winograd=None`` means: on for CPU float32 nets without
    autocast (on CUDA, cuDNN already picks Winograd/FFT kernels itself)."""

    winograd: bool | None = None
    tile: int = 4                       # F(tile×tile, 3×3); 2, 4 or 6 (6 is faster on paper, less accurate)
    min_channels: int = 128             # input channels below which the direct convolution is faster on CPU
    min_tiles: int = 32                 # fewer output tiles per call (batch × tiles): the direct path is as fast
    fuse_relu: bool = True              # ReLU (in place, slope 0) right after a conv is done by the conv
    fast_pool: bool | None = None       # 2x2/2 max pooling by elementwise maxima (None: on CPU)
    channels_last: bool = False
    autocast: str | None = None         # "bf16" | "fp16"
    compile: bool = False
    compile_mode: str | None = None     # torch.compile mode, e.g. "max-autotune"


class WinogradConv(nn.Module):
    """Forward of one Caffe Convolution layer (stride 1, 3×3, ungrouped) by Winograd F(tile, 3).

    The transformed filters are cached and rebuilt when the layer's weight is replaced or modified in place
    (``load_weights`` after optimising), moved, or cast."""

    def __init__(self, tile: int = 4, relu: bool = False, min_tiles: int = 0):
        super().__init__()
        self.tile = tile
        self.relu = relu
        self.min_tiles = min_tiles
        self.register_buffer("u", torch.zeros(0), persistent=False)
        self._key: tuple | None = None

    def transformed(self, weight: torch.Tensor) -> torch.Tensor:
        """``G g Gᵀ`` of ``weight``, recomputed only when the weight changed."""
        if torch.compiler.is_compiling() and self.u.numel():
            return self.u   # compiled graphs use the filters prepared before compiling (see prepare)
        key = (weight.data_ptr(), weight._version, weight.dtype, weight.device, tuple(weight.shape))
        if key != self._key:
            self.u = transform_weights(weight, self.tile)
            self._key = key
        return self.u

    def forward(self, layer: CaffeLayer, *bottoms: torch.Tensor) -> tuple[torch.Tensor, ...]:
        weight = blob(layer, 0)
        bias = blob(layer, 1) if layer.bias_term else None
        if ((torch.is_grad_enabled() and (weight.requires_grad or (bias is not None and bias.requires_grad)))
                or self._tiles(layer, bottoms[0]) < self.min_tiles):
            # training (the exact path has weight gradients), or too few tiles for the GEMMs to pay off: the
            # transformed filters are (tile+2)²/9 times the filters' size and would be streamed for little work
            tops = tuple(layer.convolve(x) for x in bottoms)
            return tuple(relu_after_conv(y) for y in tops) if self.relu else tops
        u = self.transformed(weight)
        with _no_autocast(bottoms[0]):
            return tuple(winograd_conv2d(x.to(u.dtype), u, bias, pad=tuple(layer.pad), m=self.tile,
                                         relu=self.relu) for x in bottoms)

    def prepare(self, layer: CaffeLayer) -> None:
        """Transform ``layer``'s current filters now (compiled graphs do not check for weight changes)."""
        self.transformed(blob(layer, 0))

    def _tiles(self, layer: CaffeLayer, x: torch.Tensor) -> int:
        ho, wo = (x.shape[2 + i] + 2 * layer.pad[i] - 2 for i in range(2))
        return x.shape[0] * -(-ho // self.tile) * -(-wo // self.tile)

    def extra_repr(self) -> str:
        return f"F({self.tile}x{self.tile},3x3){' + ReLU' if self.relu else ''}"


def _no_autocast(x: torch.Tensor):
    # Winograd's transforms amplify rounding: run them in the tensor's own (float32) precision
    if torch.is_autocast_enabled(x.device.type):
        return torch.autocast(x.device.type, enabled=False)
    return contextlib.nullcontext()


def winograd_eligible(layer: CaffeLayer) -> bool:
    """Caffe Convolution layers this path computes exactly: 2-D, 3×3, stride 1, dilation 1, group 1, axis 1."""
    return (layer.spec.type == "Convolution" and getattr(layer, "transposed", True) is False
            and list(layer.kernel) == [3, 3] and list(layer.stride) == [1, 1] and list(layer.dilation) == [1, 1]
            and layer.group == 1 and layer.axis == 1 and len(layer.spec.bottom_shapes[0]) == 4)


def _in_place_relu_after(net: Net, index: int) -> int | None:
    """Index of the ReLU that follows layer ``index`` in place on its only top (slope 0), if any."""
    if index + 1 >= len(net.layer_list):
        return None
    conv, nxt = net.net_param.layer[index], net.net_param.layer[index + 1]
    if (nxt.type == "ReLU" and len(conv.top) == 1 and list(nxt.bottom) == [conv.top[0]]
            and list(nxt.top) == [conv.top[0]] and nxt.relu_param.negative_slope == 0
            and not isinstance(net.layer_list[index + 1], FusedAway)):
        return index + 1
    return None


def install_fast_paths(net: Net, *, winograd: bool = True, tile: int = 4, min_channels: int = 128,
                       min_tiles: int = 32, fuse_relu: bool = True, fast_pool: bool = True) -> list[str]:
    """Give ``net``'s layers their fast inference paths; returns the names of the layers changed.

    Eligible convolutions with at least ``min_channels`` input channels go through Winograd F(tile, 3) (at run
    time, when a call has at least ``min_tiles`` output tiles); an in-place ReLU right after a convolution is
    done by the convolution; 2×2/2 max pooling uses :class:`MaxPool2x2`.  Layers keep their parameters."""
    if tile not in SUPPORTED_TILES:
        raise VGGProtoError(f"Winograd tile {tile} is not supported (choose one of {SUPPORTED_TILES})")
    changed = []
    for index, (name, layer) in enumerate(zip(net.layer_names, net.layer_list)):
        if fast_pool and is_plain_max_pool_2x2(layer):
            _replace(net, index, MaxPool2x2(layer))
            changed.append(name)
            continue
        if layer.spec.type != "Convolution" or getattr(layer, "accelerated", None) is not None:
            continue
        relu_at = _in_place_relu_after(net, index) if fuse_relu and len(layer.spec.bottom_shapes) == 1 else None
        if winograd and winograd_eligible(layer) and layer.spec.bottom_shapes[0][1] >= min_channels:
            layer.accelerated = WinogradConv(tile, relu_at is not None, min_tiles).to(net.device)
        elif relu_at is not None:
            layer.accelerated = ConvReLU()
        else:
            continue
        if relu_at is not None:
            relu = net.layer_list[relu_at]
            stand_in = FusedAway(relu.spec)
            stand_in.top_shapes = list(relu.top_shapes)
            stand_in.blob_shapes = []
            _replace(net, relu_at, stand_in)
        changed.append(name)
    log.info("fast paths on %d layer(s): %s", len(changed), ", ".join(changed))
    return changed


def _replace(net: Net, index: int, layer: CaffeLayer) -> None:
    net.layer_list[index] = layer
    net.layer_dict[net.layer_names[index]] = layer


class InferenceNet(nn.Module):
    """``net`` run for inference with the chosen options: ``forward(**inputs)`` as :meth:`Net.forward`, without
    autograd, under autocast if asked, with channels_last inputs if asked, compiled if asked."""

    def __init__(self, net: Net, options: FastOptions):
        super().__init__()
        self.net = net
        self.options = options
        self.compiled = torch.compile(net, mode=options.compile_mode) if options.compile else None

    def forward(self, **inputs: np.ndarray | torch.Tensor) -> dict[str, torch.Tensor]:
        device = self.net.device
        if self.options.channels_last:
            inputs = {k: _channels_last(self.net.as_input(k, v)) for k, v in inputs.items()}
        cast = (torch.autocast(device.type, dtype=AUTOCAST_DTYPES[self.options.autocast])
                if self.options.autocast else contextlib.nullcontext())
        with torch.no_grad(), cast:
            return (self.net if self.compiled is None else self.compiled)(**inputs)


def _channels_last(x: torch.Tensor) -> torch.Tensor:
    return x.contiguous(memory_format=torch.channels_last) if x.dim() == 4 else x


def optimize_for_inference(net: Net, *, winograd: bool | None = None, tile: int = 4, min_channels: int = 128,
                           min_tiles: int = 32, fuse_relu: bool = True, fast_pool: bool | None = None,
                           channels_last: bool = False, autocast: str | None = None,
                           compile: bool = False, compile_mode: str | None = None) -> InferenceNet:
    """Prepare ``net`` (modified in place: its convolutions get the fast path) and return the callable to run.

    ``autocast``: ``"bf16"`` or ``"fp16"``.  ``winograd=None``: on for a CPU float32 net without autocast.
    ``fast_pool=None``: on for CPU.  ``fuse_relu`` and ``fast_pool`` are exact; Winograd rounds differently.
    The plain ``net(...)`` keeps working; with Winograd installed it too uses the fast path under no_grad.
    With ``compile=True`` load the weights and move the net before optimising: the compiled graph keeps the
    Winograd filters transformed here (eager runs re-transform them whenever the weights change).
    """
    if autocast is not None and autocast not in AUTOCAST_DTYPES:
        raise VGGProtoError(f"autocast '{autocast}' is not supported (choose bf16 or fp16)")
    options = FastOptions(winograd, tile, min_channels, min_tiles, fuse_relu, fast_pool, channels_last, autocast,
                          compile, compile_mode)
    device = net.device
    if winograd is None:
        winograd = device.type == "cpu" and net.dtype == torch.float32 and autocast is None
    install_fast_paths(net, winograd=winograd, tile=tile, min_channels=min_channels, min_tiles=min_tiles,
                       fuse_relu=fuse_relu, fast_pool=device.type == "cpu" if fast_pool is None else fast_pool)
    if channels_last:
        net.to(memory_format=torch.channels_last)
    for layer in net.layer_list:
        if isinstance(getattr(layer, "accelerated", None), WinogradConv):
            layer.accelerated.prepare(layer)
    return InferenceNet(net, options)
