"""Caffe's learning-rate policies and the six update rules, as small pure functions on tensors.

Everything here reproduces ``BVLC/caffe:src/caffe/solvers/*_solver.cpp`` exactly (order of operations included), in
float32 like Caffe's CPU solver, so that a vggproto run reproduces a ``caffe train`` run weight for weight.  The
solver loop (:mod:`vggproto.train.solver`) owns the order of the steps: clip → normalise → regularise → update rule
→ ``w -= diff``.
Rules are plain tensor ops under ``torch.no_grad()`` (not ``torch.optim``): Caffe folds the learning rate into the SGD
history, which ``torch.optim.SGD`` does not.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Callable, Sequence

import torch

from vggproto.caffe import textpos
from vggproto.caffe.proto import caffe_pb2
from vggproto.errors import SolverError

SOLVER_TYPES = ("SGD", "Nesterov", "AdaGrad", "RMSProp", "AdaDelta", "Adam")


# ------------------------------------------------------------------------------------------------------------------
# Validation
# ------------------------------------------------------------------------------------------------------------------

def check_solver(param: caffe_pb2.SolverParameter, path: str | None = None) -> None:
    """Refuse what Caffe refuses (its CHECKs), with a message naming the field and what is supported, and
    :func:`refuse_unmeant` what Caffe accepts although nobody means it."""
    where = f"{path}: " if path else ""
    if param.type not in SOLVER_TYPES:
        raise SolverError(f"{where}unknown solver type '{param.type}'; supported: {', '.join(SOLVER_TYPES)}")
    policy = param.lr_policy
    if policy not in LR_POLICIES:
        raise SolverError(f"{where}unknown lr_policy '{policy}'; supported: {', '.join(LR_POLICIES)}")
    if policy in ("step", "sigmoid") and param.stepsize <= 0:
        raise SolverError(f"{where}lr_policy '{policy}' needs stepsize > 0 (got {param.stepsize})")
    if policy in ("step", "exp", "inv", "sigmoid", "multistep") and param.gamma < 0:
        raise SolverError(f"{where}lr_policy '{policy}' needs gamma >= 0 (got {param.gamma})")
    if policy == "poly" and param.max_iter <= 0:
        raise SolverError(f"{where}lr_policy 'poly' needs max_iter > 0")
    # Caffe: adagrad_solver.cpp / rmsprop_solver.cpp constructor CHECKs
    if param.type in ("AdaGrad", "RMSProp") and param.momentum != 0:
        raise SolverError(f"{where}momentum cannot be used with {param.type} (got momentum: {param.momentum})")
    if param.type == "RMSProp" and not 0 <= param.rms_decay < 1:
        raise SolverError(f"{where}rms_decay must be in [0, 1) (got {param.rms_decay})")
    if param.regularization_type not in ("L1", "L2"):
        raise SolverError(f"{where}unknown regularization_type '{param.regularization_type}'; supported: L1, L2")
    if param.iter_size < 1:
        raise SolverError(f"{where}iter_size must be >= 1 (got {param.iter_size})")
    if param.average_loss < 1:
        raise SolverError(f"{where}average_loss must be >= 1 (got {param.average_loss})")
    refuse_unmeant(param, path)


def refuse_unmeant(param: caffe_pb2.SolverParameter, path: str | None = None) -> None:
    """Refuse the values Caffe accepts without a CHECK but that are never meant: a negative ``base_lr`` (the
    updates climb the loss) and ``stepvalue``s that do not increase (sgd_solver.cpp GetLearningRate advances one
    step per iteration from the first out-of-order value on, so the schedule is not the one written)."""
    if param.base_lr < 0:
        raise SolverError(f"{_field_at(path, 'base_lr', -1)}base_lr: {param.base_lr:g} is negative, so the updates "
                          f"would climb the loss; Caffe would have accepted it, vggproto refuses it "
                          f"(give a positive base_lr)")
    values = list(param.stepvalue)
    bad = next((i for i in range(1, len(values)) if values[i] <= values[i - 1]), None)
    if bad is not None:
        raise SolverError(f"{_field_at(path, 'stepvalue', bad)}stepvalue: {values[bad]} does not increase (it follows "
                          f"{values[bad - 1]}), so the steps would not come where written; Caffe would have accepted "
                          f"it, vggproto refuses it (list the stepvalues in increasing order)")


def _field_at(path: str | None, field: str, index: int) -> str:
    """``solver.prototxt:7: ``: where the ``index``-th value of a top-level ``field`` is written (the file alone
    when it is binary or unreadable, nothing for a solver given as a message)."""
    if path is None:
        return ""
    try:
        found = textpos.values_of(Path(path).read_text(encoding="utf-8"), (field,))
    except (OSError, UnicodeDecodeError):
        found = []
    return f"{path}:{found[index].line}: " if -len(found) <= index < len(found) else f"{path}: "


# ------------------------------------------------------------------------------------------------------------------
# Learning-rate policies (Caffe: sgd_solver.cpp SGDSolver::GetLearningRate)
# ------------------------------------------------------------------------------------------------------------------

# Caffe: sgd_solver.cpp GetLearningRate — one function per lr_policy: (param, base, it, current_step) -> (rate, step)
LrPolicy = Callable[[caffe_pb2.SolverParameter, float, int, int], tuple[float, int]]


def _fixed(p: caffe_pb2.SolverParameter, base: float, it: int, step: int) -> tuple[float, int]:
    return base, step


def _step(p: caffe_pb2.SolverParameter, base: float, it: int, step: int) -> tuple[float, int]:
    step = it // p.stepsize
    return base * float(p.gamma) ** step, step


def _exp(p: caffe_pb2.SolverParameter, base: float, it: int, step: int) -> tuple[float, int]:
    return base * float(p.gamma) ** it, step


def _inv(p: caffe_pb2.SolverParameter, base: float, it: int, step: int) -> tuple[float, int]:
    return base * (1.0 + float(p.gamma) * it) ** (-float(p.power)), step


def _multistep(p: caffe_pb2.SolverParameter, base: float, it: int, step: int) -> tuple[float, int]:
    if step < len(p.stepvalue) and it >= p.stepvalue[step]:  # advances at most once per call, as Caffe's does
        step += 1
    return base * float(p.gamma) ** step, step


def _poly(p: caffe_pb2.SolverParameter, base: float, it: int, step: int) -> tuple[float, int]:
    return base * (1.0 - it / float(p.max_iter)) ** float(p.power), step


def _sigmoid(p: caffe_pb2.SolverParameter, base: float, it: int, step: int) -> tuple[float, int]:
    return base * (1.0 / (1.0 + math.exp(-float(p.gamma) * (it - float(p.stepsize))))), step


LR_POLICY_RULES: dict[str, LrPolicy] = {"fixed": _fixed, "step": _step, "exp": _exp, "inv": _inv,
                                        "multistep": _multistep, "poly": _poly, "sigmoid": _sigmoid}
LR_POLICIES = tuple(LR_POLICY_RULES)


def learning_rate(param: caffe_pb2.SolverParameter, it: int, current_step: int) -> tuple[float, int]:
    """``(rate, current_step)`` at iteration ``it`` (number of completed updates).

    ``current_step`` is state: ``step`` recomputes it, ``multistep`` advances it at most once per call (so it must
    be carried from call to call and saved in the solverstate), the other policies leave it alone.
    """
    policy = LR_POLICY_RULES.get(param.lr_policy)
    if policy is None:
        raise SolverError(f"unknown lr_policy '{param.lr_policy}'; supported: {', '.join(LR_POLICIES)}")
    rate, current_step = policy(param, float(param.base_lr), it, current_step)
    # Caffe stores the rate in a Dtype (float32)
    return float(torch.tensor(rate, dtype=torch.float32)), current_step


# ------------------------------------------------------------------------------------------------------------------
# Gradient pre-processing (Caffe: sgd_solver.cpp ClipGradients / Normalize / Regularize)
# ------------------------------------------------------------------------------------------------------------------

def clip_gradients(grads: Sequence[torch.Tensor], clip: float) -> float:
    """Scale every gradient by ``clip/‖g‖`` when the global L2 norm exceeds ``clip`` (< 0: off); returns ‖g‖."""
    if clip < 0 or not grads:
        return -1.0
    sumsq = torch.zeros((), dtype=grads[0].dtype, device=grads[0].device)
    for g in grads:
        sumsq = sumsq + (g * g).sum()
    norm = float(torch.sqrt(sumsq))
    if norm > clip:
        scale = clip / norm
        for g in grads:
            g.mul_(scale)
    return norm


def normalize(grad: torch.Tensor, iter_size: int) -> None:
    """Average the ``iter_size`` summed mini-batch gradients (Caffe skips the multiply when iter_size is 1)."""
    if iter_size != 1:
        grad.mul_(1.0 / iter_size)


def regularize(grad: torch.Tensor, weight: torch.Tensor, local_decay: float, kind: str) -> None:
    """Add the coupled weight decay: L2 ``+decay·w``, L1 ``+decay·sign(w)``; nothing when the decay is 0."""
    if local_decay == 0:
        return
    if kind == "L2":
        grad.add_(weight, alpha=local_decay)
    else:
        grad.add_(torch.sign(weight), alpha=local_decay)


# ------------------------------------------------------------------------------------------------------------------
# Update rules.  Each turns ``grad`` (regularised diff) into the step, in place, updating its history; the solver
# then does ``w -= grad``.  ``hist`` holds this param's history blobs (1, or 2 for AdaDelta/Adam).
# ------------------------------------------------------------------------------------------------------------------

UpdateRule = Callable[[torch.Tensor, list, float, caffe_pb2.SolverParameter, int], None]


def sgd(grad: torch.Tensor, hist: list, rate: float, p: caffe_pb2.SolverParameter, it: int) -> None:
    """h = μ·h + rate·g; step = h (Caffe: sgd_solver.cpp, lr folded into the history)."""
    h = hist[0]
    h.mul_(p.momentum).add_(grad, alpha=rate)
    grad.copy_(h)


def nesterov(grad: torch.Tensor, hist: list, rate: float, p: caffe_pb2.SolverParameter, it: int) -> None:
    """h_new = μ·h + rate·g; step = (1+μ)·h_new − μ·h_old (Caffe: nesterov_solver.cpp)."""
    h = hist[0]
    old = h.clone()
    h.mul_(p.momentum).add_(grad, alpha=rate)
    grad.copy_(h * (1.0 + p.momentum) - old * p.momentum)


def adagrad(grad: torch.Tensor, hist: list, rate: float, p: caffe_pb2.SolverParameter, it: int) -> None:
    """h += g²; step = rate·g/(√h + δ) (Caffe: adagrad_solver.cpp)."""
    h = hist[0]
    h.add_(grad * grad)
    grad.copy_(grad / (torch.sqrt(h) + p.delta) * rate)


def rmsprop(grad: torch.Tensor, hist: list, rate: float, p: caffe_pb2.SolverParameter, it: int) -> None:
    """h = d·h + (1−d)·g²; step = rate·g/(√h + δ) (Caffe: rmsprop_solver.cpp)."""
    h = hist[0]
    h.mul_(p.rms_decay).add_(grad * grad, alpha=1.0 - p.rms_decay)
    grad.copy_(grad / (torch.sqrt(h) + p.delta) * rate)


def adadelta(grad: torch.Tensor, hist: list, rate: float, p: caffe_pb2.SolverParameter, it: int) -> None:
    """h = μh + (1−μ)g²; u = g·√((h2+δ)/(h+δ)); h2 = μh2 + (1−μ)u²; step = rate·u (Caffe: adadelta_solver.cpp)."""
    h, h2 = hist
    mu = p.momentum
    h.mul_(mu).add_(grad * grad, alpha=1.0 - mu)
    u = grad * torch.sqrt((h2 + p.delta) / (h + p.delta))
    h2.mul_(mu).add_(u * u, alpha=1.0 - mu)
    grad.copy_(u * rate)


def adam(grad: torch.Tensor, hist: list, rate: float, p: caffe_pb2.SolverParameter, it: int) -> None:
    """m, v moments; step = rate·√(1−β2^t)/(1−β1^t) · m/(√v + ε), t = iter+1 (Caffe: adam_solver.cpp)."""
    m, v = hist
    b1, b2, t = p.momentum, p.momentum2, it + 1
    correction = math.sqrt(1.0 - b2 ** t) / (1.0 - b1 ** t)
    m.mul_(b1).add_(grad, alpha=1.0 - b1)
    v.mul_(b2).add_(grad * grad, alpha=1.0 - b2)
    grad.copy_(m / (torch.sqrt(v) + p.delta) * (rate * correction))


UPDATE_RULES: dict[str, UpdateRule] = {
    "SGD": sgd, "Nesterov": nesterov, "AdaGrad": adagrad, "RMSProp": rmsprop, "AdaDelta": adadelta, "Adam": adam,
}


def history_per_param(solver_type: str) -> int:
    """How many history blobs each learnable parameter has (AdaDelta and Adam keep two: 2N in the solverstate)."""
    return 2 if solver_type in ("AdaDelta", "Adam") else 1


def new_history(solver_type: str, params: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Zero history in Caffe's solverstate order: N blobs, then (AdaDelta/Adam) N more."""
    hist = [torch.zeros_like(w, memory_format=torch.contiguous_format) for w in params]
    if history_per_param(solver_type) == 2:
        hist += [torch.zeros_like(w, memory_format=torch.contiguous_format) for w in params]
    return hist


def param_history(history: Sequence[torch.Tensor], index: int, n_params: int) -> list[torch.Tensor]:
    """The history blobs of parameter ``index`` out of the flat solverstate list."""
    if len(history) == 2 * n_params:
        return [history[index], history[index + n_params]]
    return [history[index]]


@torch.no_grad()
def apply_update(param: caffe_pb2.SolverParameter, weights: Sequence[torch.Tensor], grads: Sequence[torch.Tensor],
                 history: Sequence[torch.Tensor], lr_mults: Sequence[float], decay_mults: Sequence[float],
                 rate: float, it: int) -> float:
    """One Caffe ``ApplyUpdate`` after the rate is known: clip, normalise, regularise, rule, ``w -= step``.

    ``grads`` are the summed iter_size gradients (modified in place).  Returns the pre-clip gradient norm (or -1).
    """
    norm = clip_gradients(grads, float(param.clip_gradients))
    rule = UPDATE_RULES[param.type]
    n = len(weights)
    for i, (w, g) in enumerate(zip(weights, grads)):
        normalize(g, param.iter_size)
        regularize(g, w, float(param.weight_decay) * float(decay_mults[i]), param.regularization_type)
        rule(g, param_history(history, i, n), rate * float(lr_mults[i]), param, it)
        w.sub_(g)  # Caffe: Blob::Update, data -= diff
    return norm


# ------------------------------------------------------------------------------------------------------------------
# The paper's schedule (opt-in): divide the lr by 10 when the validation accuracy stops improving
# ------------------------------------------------------------------------------------------------------------------

class Plateau:
    """Simonyan & Zisserman §3.1: "the learning rate was ... decreased by a factor of 10 when the validation set
    accuracy stopped improving".  After ``patience`` tests without a new best, drop (at most ``max_drops`` times).

    The paper's schedule is plateau-only: when enabled, the rate is ``base_lr * 0.1 ** drops`` and the solver's
    ``lr_policy`` is not applied (stacking both gave up to six drops instead of three); solver files stay BVLC-valid.
    """

    def __init__(self, patience: int, max_drops: int):
        self.patience, self.max_drops = int(patience), int(max_drops)
        self.best: float | None = None
        self.since_best = 0
        self.drops = 0

    @property
    def enabled(self) -> bool:
        return self.patience > 0 and self.max_drops > 0

    @property
    def factor(self) -> float:
        return 0.1 ** self.drops

    def observe(self, value: float) -> bool:
        """Record one test score; True when this observation triggers a drop."""
        if not self.enabled:
            return False
        if self.best is None or value > self.best:
            self.best, self.since_best = value, 0
            return False
        self.since_best += 1
        if self.since_best >= self.patience and self.drops < self.max_drops:
            self.drops += 1
            self.since_best = 0
            return True
        return False

    def rate(self, param: caffe_pb2.SolverParameter, it: int, current_step: int) -> tuple[float, int]:
        """``(rate, current_step)``: the solver's lr policy, or with the plateau rule on, ``base_lr`` divided by 10
        per drop and nothing else (Sect. 3.1: the lr "was initially set to 10^-2, and then decreased by a factor
        of 10 when the validation set accuracy stopped improving")."""
        if not self.enabled:
            return learning_rate(param, it, current_step)
        return float(torch.tensor(param.base_lr * self.factor, dtype=torch.float32)), current_step

    def state(self) -> dict:
        return {"best": self.best, "since_best": self.since_best, "drops": self.drops}

    def load(self, state: dict) -> None:
        self.best = state.get("best")
        self.since_best = int(state.get("since_best", 0))
        self.drops = int(state.get("drops", 0))
