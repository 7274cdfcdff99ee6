"""The one scoring loop of a TEST net, shared by the solver's periodic test and ``vggproto test``.

Caffe has it twice: ``Solver::Test`` (src/caffe/solver.cpp) and ``test()`` in tools/caffe.cpp.  Both forward the
net for a number of batches without gradients, sum every element of every output blob (and the loss) and report
the means, each with its output's loss weight; they differ only in the lines they log.  :func:`score` is that loop;
:func:`caffe_test` is ``caffe test`` around it (the solver logs through :func:`vggproto.train.log.output_lines`).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Sequence

import torch

from vggproto.caffe.glog import fmt

if TYPE_CHECKING:
    from vggproto.net.interpreter import Net

log = logging.getLogger("vggproto.train.solver.caffe")   # caffe.cpp test()

#: Called after each batch with its index and every output blob flattened to float64 on the CPU.
BatchHook = Callable[[int, dict[str, torch.Tensor]], None]


@dataclass(frozen=True)
class Scores:
    """Means over the batches run: ``outputs`` holds ``(blob, mean of each element, loss weight)`` in the net's
    output order; ``loss`` is the mean loss per batch (0 unless computed); ``interrupted`` when ``stop`` asked."""

    outputs: list[tuple[str, list[float], float]]
    loss: float = 0.0
    interrupted: bool = False


def score(net: Net, iterations: int, *, compute_loss: bool = True, on_batch: BatchHook | None = None,
          stop: Callable[[], bool] | None = None) -> Scores:
    """Forward ``net`` ``iterations`` times and average its outputs (Caffe: Solver::Test, tools/caffe.cpp test).

    ``stop`` is polled before every batch, as Solver::Test polls the signal handler; when it answers true the
    scores are dropped (Caffe logs "Test interrupted." and returns nothing).
    """
    sums: dict[str, torch.Tensor] = {}
    loss = 0.0
    with torch.no_grad():
        for i in range(iterations):
            if stop is not None and stop():
                return Scores([], interrupted=True)
            outputs = net.forward()
            if compute_loss:
                loss += float(net.loss)
            flat = {name: value.detach().double().reshape(-1).cpu() for name, value in outputs.items()}
            if on_batch is not None:
                on_batch(i, flat)
            for name, values in flat.items():
                sums[name] = sums[name] + values if name in sums else values.clone()
    n = max(iterations, 1)
    weights = net.loss_weights
    return Scores([(name, (total / n).tolist(), weights.get(name, 0.0)) for name, total in sums.items()], loss / n)


def flat_scores(outputs: Sequence[tuple[str, Sequence[float], float]]) -> list[tuple[str, float]]:
    """``(name, value)`` per element of :attr:`Scores.outputs`: ``name`` for one-element outputs, else
    ``name[i]`` (the csv log's columns and the plateau schedule's names)."""
    flat = []
    for name, values, _ in outputs:
        if len(values) == 1:
            flat.append((name, values[0]))
        else:
            flat.extend((f"{name}[{i}]", v) for i, v in enumerate(values))
    return flat


def batch_lines(index: int, outputs: dict[str, torch.Tensor]) -> list[str]:
    """Caffe: tools/caffe.cpp test — ``Batch i, name = v`` for every element of every output of one batch."""
    return [f"Batch {index}, {name} = {fmt(v)}" for name, values in outputs.items() for v in values.tolist()]


def caffe_test_lines(scores: Scores) -> list[str]:
    """Caffe: tools/caffe.cpp test — ``Loss: L``, then ``name = mean`` with `` (* w = w·mean loss)`` for losses."""
    lines = [f"Loss: {fmt(scores.loss)}"]
    for name, values, weight in scores.outputs:
        for value in values:
            suffix = f" (* {fmt(weight)} = {fmt(weight * value)} loss)" if weight else ""
            lines.append(f"{name} = {fmt(value)}{suffix}")
    return lines


def caffe_test(model: str, weights: str, iterations: int = 50, device: str = "cpu", level: int = 0,
               stages: Sequence[str] = (), engine: Callable | None = None) -> Scores:
    """``caffe test``: score a trained model's TEST net and log Caffe's lines (tools/caffe.cpp test); ``engine``
    runs the net (``vggproto.commands.engine_option.engine_hook``: its data layers stay in vggproto).

    ``weights`` may name several comma-separated files, applied in order.
    """
    from vggproto.net.interpreter import Net
    net = Net(model, weights=weights, phase="TEST", stages=tuple(stages), level=level)
    if device != "cpu":
        net.to(device)
    if engine is not None:
        net = engine(net, ())
    log.info("Running for %d iterations.", iterations)

    def log_batch(index: int, outputs: dict[str, torch.Tensor]) -> None:
        for line in batch_lines(index, outputs):
            log.info(line)
    scores = score(net, iterations, on_batch=log_batch)
    for line in caffe_test_lines(scores):
        log.info(line)
    return scores
