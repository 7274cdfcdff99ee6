"""Recurrent layers: LSTM and RNN over (T, N, ...) sequences with Caffe's stream-continuation indicators.

Caffe: src/caffe/layers/recurrent_layer.cpp, lstm_layer.cpp, lstm_unit_layer.cpp, rnn_layer.cpp.  Caffe unrolls
these into a hidden net; here the same equations run as a loop over the T timesteps, with autograd for backward.

Bottoms: ``x`` (T, N, ...), ``cont`` (T, N) — 0 marks the first step of a sequence, which zeroes the previous
state — an optional ``x_static`` (N, ...) added to every step, and with ``expose_hidden`` the initial states
(``h_0``; LSTM also ``c_0``, each (1, N, H)).  Tops: the per-step output (T, N, H), and with ``expose_hidden``
the final states.  Without ``expose_hidden`` the final state of one forward is the initial state of the next
(Caffe copies h_T into h_0), so a sequence may continue across batches when its ``cont`` stays 1.

Parameter blobs, in Caffe's order: LSTM ``W_xc (4H, K), b_c (4H), [W_xc_static (4H, Ks)], W_hc (4H, H)`` with
gates in the order i, f, o, g; RNN ``W_xh, b_h, [W_xh_static], W_hh, W_ho, b_o``.

``LSTMUnit`` is the one LSTM step Caffe's unrolled LSTM net is made of, usable on its own (the LRCN examples):
bottoms ``c_prev`` (1, N, D), gate inputs ``x`` (1, N, 4D) and ``cont`` (1, N); tops ``c`` and ``h`` (1, N, D).
Its backward is Caffe's hand-written one (:class:`_LSTMUnitStep`), not autograd's.
"""
from __future__ import annotations

import logging
import types
from typing import Sequence

import torch
from torch.nn.functional import linear as _linear

from vggproto.errors import NetError
from vggproto.layers.base import TRACED
from vggproto.layers.common import blob, count, expect_bottoms, expect_tops
from vggproto.layers.misc import needs_index_grad
from vggproto.layers.registry import CaffeLayer, LayerSpec, register

log = logging.getLogger("vggproto.net.interpreter")


def lstm_gates(gates: torch.Tensor, hidden: int) -> tuple[torch.Tensor, ...]:
    """The activations σ(i'), σ(f'), σ(o'), tanh(g') of pre-activations laid out [i', f', o', g'] on the last
    axis (Caffe's gate order), shared by LSTM and LSTMUnit."""
    i, f, o = (torch.sigmoid(gates[..., j * hidden:(j + 1) * hidden]) for j in range(3))
    return i, f, o, torch.tanh(gates[..., 3 * hidden:])


class Recurrent(CaffeLayer):
    """Shared set-up of LSTM and RNN: bottom checks, static input, exposed hidden states, carried state."""
    onnx = TRACED
    backward = True

    #: hidden-state blobs (LSTM: h and c; RNN: h)
    states: tuple[str, ...] = ("h",)

    def __init__(self, spec: LayerSpec):
        super().__init__(spec)
        p = spec.param.recurrent_param
        if p.num_output <= 0:
            raise spec.error("recurrent_param.num_output must be positive")
        self.hidden, self.expose = int(p.num_output), p.expose_hidden
        extra = len(self.states) if self.expose else 0
        expect_bottoms(spec, 2 + extra, 3 + extra)
        expect_tops(spec, 1 + extra)
        shapes = [tuple(s) for s in spec.bottom_shapes]
        self.static = len(shapes) == 3 + extra
        self._check_shapes(spec, shapes)
        self.t_steps, self.n = shapes[0][0], shapes[0][1]
        if p.debug_info:
            log.warning("%s: recurrent_param.debug_info has no unrolled net to report on in vggproto; use the "
                        "net's or solver's debug_info", spec.name)
        self.state_shape = (1, self.n, self.hidden)
        self._add_params(p, count(shapes[0], 2), count(shapes[2], 1) if self.static else 0)
        self.top_shapes = [(self.t_steps, self.n, self.hidden)] + [self.state_shape] * extra
        for name in self.states:
            self.register_buffer(f"carried_{name}", torch.zeros(self.state_shape), persistent=False)

    def _check_shapes(self, spec: LayerSpec, shapes: list[tuple[int, ...]]) -> None:
        # Caffe: recurrent_layer.cpp LayerSetUp / Reshape checks
        x, cont = shapes[0], shapes[1]
        if len(x) < 2:
            raise spec.error(f"bottom[0] must have at least 2 axes (#timesteps, #streams, ...), got {x}")
        if len(cont) != 2 or cont != x[:2]:
            raise spec.error(f"bottom[1] (sequence continuation indicators) must be (#timesteps, #streams) = "
                             f"{x[:2]}, got {cont}")
        if self.static and (len(shapes[2]) < 1 or shapes[2][0] != x[1]):
            raise spec.error(f"bottom[2] (static input) must have #streams = {x[1]} as its first axis, "
                             f"got {shapes[2]}")
        for index in range(2 + self.static, len(shapes)):
            if shapes[index] != (1, x[1], self.hidden):
                raise spec.error(f"bottom[{index}] (initial hidden state) must be (1, {x[1]}, {self.hidden}), "
                                 f"got {shapes[index]}")

    def _add_params(self, p, k: int, k_static: int) -> None:
        raise NotImplementedError

    def forward(self, x: torch.Tensor, cont: torch.Tensor, *rest: torch.Tensor) -> tuple[torch.Tensor, ...]:
        static = rest[0] if self.static else None
        given = rest[1:] if self.static else rest
        # a copy of the carried state: this pass's graph reads it while the buffer takes the pass's final state
        initial = list(given) if self.expose else [getattr(self, f"carried_{s}").to(x, copy=True) for s in self.states]
        cont = cont.detach().to(x.dtype)   # Caffe refuses to backpropagate to the indicators
        outputs, final = self.run(x.reshape(self.t_steps, self.n, -1), cont, static, initial)
        if not self.expose:   # Caffe: recurrent_layer.cpp copies the final state into h_0/c_0 for the next pass
            for name, state in zip(self.states, final):
                getattr(self, f"carried_{name}").copy_(state.detach())
        return (outputs, *final) if self.expose else (outputs,)

    def run(self, x: torch.Tensor, cont: torch.Tensor, static: torch.Tensor | None,
            initial: Sequence[torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        raise NotImplementedError


@register("LSTM")
class LSTM(Recurrent):
    """Caffe: lstm_layer.cpp + lstm_unit_layer.cpp — gates [i, f, o, g] = W_xc x_t + b_c (+ W_xc_static x_static)
    + W_hc (cont_t h_{t-1}); c_t = cont_t σ(f) c_{t-1} + σ(i) tanh(g); h_t = σ(o) tanh(c_t)."""

    states = ("h", "c")

    def _add_params(self, p, k: int, k_static: int) -> None:
        h4 = 4 * self.hidden
        self.add_blob((h4, k), p.weight_filler)              # W_xc
        self.add_blob((h4,), p.bias_filler)                  # b_c
        if self.static:
            self.add_blob((h4, k_static), p.weight_filler)   # W_xc_static
        self.add_blob((h4, self.hidden), p.weight_filler)    # W_hc

    def run(self, x: torch.Tensor, cont: torch.Tensor, static: torch.Tensor | None,
            initial: Sequence[torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        h, c = (s.reshape(self.n, self.hidden) for s in initial)
        gates_x = _linear(x, blob(self, 0), blob(self, 1))
        if static is not None:
            gates_x = gates_x + _linear(static.reshape(self.n, -1), blob(self, 2))
        w_hc, n_h = blob(self, 3 if self.static else 2), self.hidden
        outputs = []
        for t in range(self.t_steps):
            keep = cont[t].unsqueeze(1)
            i, f, o, g = lstm_gates(gates_x[t] + _linear(keep * h, w_hc), n_h)
            c = keep * f * c + i * g
            h = o * torch.tanh(c)
            outputs.append(h)
        return torch.stack(outputs), [h.unsqueeze(0), c.unsqueeze(0)]


@register("RNN")
class RNN(Recurrent):
    """Caffe: rnn_layer.cpp — h_t = tanh(W_xh x_t + b_h (+ W_xh_static x_static) + W_hh (cont_t h_{t-1}));
    o_t = tanh(W_ho h_t + b_o)."""

    def _add_params(self, p, k: int, k_static: int) -> None:
        n_h = self.hidden
        self.add_blob((n_h, k), p.weight_filler)             # W_xh
        self.add_blob((n_h,), p.bias_filler)                 # b_h
        if self.static:
            self.add_blob((n_h, k_static), p.weight_filler)  # W_xh_static
        self.add_blob((n_h, n_h), p.weight_filler)           # W_hh
        self.add_blob((n_h, n_h), p.weight_filler)           # W_ho
        self.add_blob((n_h,), p.bias_filler)                 # b_o

    def run(self, x: torch.Tensor, cont: torch.Tensor, static: torch.Tensor | None,
            initial: Sequence[torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        h = initial[0].reshape(self.n, self.hidden)
        pre_x = _linear(x, blob(self, 0), blob(self, 1))
        if static is not None:
            pre_x = pre_x + _linear(static.reshape(self.n, -1), blob(self, 2))
        first = 3 if self.static else 2
        w_hh, w_ho, b_o = (blob(self, first + j) for j in range(3))
        outputs = []
        for t in range(self.t_steps):
            h = torch.tanh(pre_x[t] + _linear(cont[t].unsqueeze(1) * h, w_hh))
            outputs.append(torch.tanh(_linear(h, w_ho, b_o)))
        return torch.stack(outputs), [h.unsqueeze(0)]


class _LSTMUnitStep(torch.autograd.Function):
    """One LSTM step with Caffe's forward and backward formulas.

    A Function rather than autograd because Caffe's backward differentiates the forget gate as f·(1 − f) with the
    cont-scaled f: the true derivative for cont ∈ {0, 1} only, so autograd would differ for a fractional cont.
    """

    @staticmethod
    def forward(ctx, c_prev: torch.Tensor, x: torch.Tensor, cont: torch.Tensor,
                refusal: NetError | None) -> tuple[torch.Tensor, torch.Tensor]:
        i, f, o, g = lstm_gates(x, c_prev.shape[-1])
        keep = cont.unsqueeze(-1).to(x.dtype)
        # Caffe: src/caffe/layers/lstm_unit_layer.cpp Forward_cpu — f = (cont == 0) ? 0 : cont * sigmoid(f')
        f = torch.where(keep == 0, torch.zeros_like(f), keep * f)
        c = f * c_prev + i * g
        tanh_c = torch.tanh(c)
        ctx.save_for_backward(c_prev, i, f, o, g, tanh_c)
        ctx.refusal = refusal
        return c, o * tanh_c

    @staticmethod
    def backward(ctx, c_diff: torch.Tensor, h_diff: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        if ctx.refusal is not None:   # Caffe: CHECK(!propagate_down[2]) "Cannot backpropagate to sequence indicators"
            raise ctx.refusal
        c_prev, i, f, o, g, tanh_c = ctx.saved_tensors
        # Caffe: lstm_unit_layer.cpp Backward_cpu — the diffs w.r.t. the pre-activations, f_diff with f * (1 - f)
        c_term = c_diff + h_diff * o * (1 - tanh_c * tanh_c)
        x_diff = torch.cat([c_term * g * i * (1 - i), c_term * c_prev * f * (1 - f),
                            h_diff * tanh_c * o * (1 - o), c_term * i * (1 - g * g)], dim=-1)
        return c_term * f, x_diff, None, None


@register("LSTMUnit")
class LSTMUnit(CaffeLayer):
    """Caffe: lstm_unit_layer.cpp — c = cont·σ(f')·c_prev + σ(i')·tanh(g'); h = σ(o')·tanh(c); no parameters."""

    n_bottoms = 3
    n_tops = 2
    onnx = TRACED
    backward = True

    def __init__(self, spec: LayerSpec):
        super().__init__(spec)
        self._check([tuple(s) for s in spec.bottom_shapes])
        self.top_shapes = [tuple(spec.bottom_shapes[0])] * 2

    def _check(self, shapes: list[tuple[int, ...]]) -> None:
        # Caffe: lstm_unit_layer.cpp Reshape — (1, N, D), (1, N, 4D), (1, N)
        names = ("c_prev (1, N, D)", "the gate inputs (1, N, 4D)", "cont (1, N)")
        n = shapes[0][1] if len(shapes[0]) > 1 else None
        for index, (shape, name) in enumerate(zip(shapes, names)):
            if len(shape) != (2 if index == 2 else 3) or shape[0] != 1 or shape[1] != n:
                raise self.spec.error(f"bottom {index} must be {name}, got shape {shape} (bottom 0 is {shapes[0]})")
        if shapes[1][2] != 4 * shapes[0][2]:
            raise self.spec.error(f"bottom 1 (the gate inputs) has {shapes[1][2]} channels; it needs 4 x "
                                  f"{shapes[0][2]} (gates i, f, o, g of each cell of bottom 0)")

    def forward(self, c_prev: torch.Tensor, x: torch.Tensor, cont: torch.Tensor) -> tuple[torch.Tensor, ...]:
        self._check([tuple(c_prev.shape), tuple(x.shape), tuple(cont.shape)])
        refusal = None
        if needs_index_grad(self.spec, cont, 2, c_prev.requires_grad or x.requires_grad):
            refusal = self.spec.error(f"cannot backpropagate to the sequence continuation indicators (bottom 2, "
                                      f"'{self.spec.param.bottom[2]}'), as in Caffe (lstm_unit_layer.cpp); give "
                                      f"it propagate_down: false")
        if torch.onnx.is_in_onnx_export():   # the exporter cannot trace a custom Function; its forward is plain ops
            return _LSTMUnitStep.forward(types.SimpleNamespace(save_for_backward=lambda *saved: None), c_prev, x,
                                         cont, None)
        return _LSTMUnitStep.apply(c_prev, x, cont, refusal)
