"""``--engine auto|torch|onnxruntime|ncnn``: one option for every inference command, and the hook it becomes.

The loops of ``evaluation``/``localize``/``train.scoring`` are written against a Net and cannot import the engine
(it ranks above them), so the command hands them :func:`engine_hook`'s function, which wraps each Net they load
in an :class:`vggproto.engine.Engine` (``keep``: the blobs the loop reads besides the net's outputs).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Sequence

import click

if TYPE_CHECKING:
    from vggproto.net.interpreter import Net

ENGINE_CHOICES = ("auto", "torch", "onnxruntime", "ncnn")

#: What the loops call on each Net they load: ``(net, blobs read besides its outputs) -> a Net stand-in``.
EngineHook = Callable[["Net", Sequence[str]], object]


def engine_option(fn: Callable) -> Callable:
    """Add ``--engine`` (default auto: the faster of ncnn and onnxruntime on the CPU, torch on a GPU)."""
    return click.option("--engine", type=click.Choice(ENGINE_CHOICES), default="auto", show_default=True,
                        help="auto: on the CPU the faster of ncnn and onnxruntime on the first batch (each "
                             "runs the part of the net it holds, verified against the interpreter on first use; "
                             "torch with a warning where neither can), torch on a GPU; torch: the interpreter; "
                             "onnxruntime, ncnn: that engine, failing instead of falling back.")(fn)


def engine_hook(engine: str) -> EngineHook:
    """The function that puts each loaded Net on ``engine``."""
    def hook(net: Net, keep: Sequence[str] = ()) -> object:
        from vggproto.engine import wrap
        return wrap(net, engine, keep)
    return hook
