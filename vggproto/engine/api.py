"""The engine as the commands and the Python API hold it: :func:`load` (a deploy net with its weights on an
engine), :func:`wrap` (the hook the inference commands hand their loops) and :class:`EngineNet` (an Engine standing in
for a Net in loops written against one)."""
from __future__ import annotations

import os
from typing import TYPE_CHECKING, Iterator, Mapping, Sequence

import numpy as np
import torch

from vggproto.engine.engine import Engine

if TYPE_CHECKING:
    from vggproto.net.interpreter import ModelSource, Net


class EngineNet:
    """What inference loops written against a :class:`Net` use, run by an :class:`Engine`: ``forward``,
    ``blobs`` and ``loss`` are the engine's; ``blob_shapes``, ``loss_weights``, ``input_names``,
    ``output_names``, ``device`` and ``parameters()`` are the Net's (the loops read shapes, weights and the device
    from them); anything else is on :attr:`net`."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.net = engine.net

    def forward(self, **inputs: np.ndarray | torch.Tensor) -> dict[str, torch.Tensor]:
        """:meth:`Engine.run`."""
        return self.engine.run(**inputs)

    @property
    def blobs(self) -> dict[str, torch.Tensor]:
        """The last pass's blobs."""
        return self.engine.blobs

    @property
    def loss(self) -> torch.Tensor | None:
        """The last pass's weighted loss."""
        return self.engine.loss

    @property
    def blob_shapes(self) -> dict[str, tuple[int, ...] | None]:
        """The Net's blob shapes (as built; the engine runs any batch)."""
        return self.net.blob_shapes

    @property
    def loss_weights(self) -> dict[str, float]:
        """The Net's weighted loss tops."""
        return self.net.loss_weights

    @property
    def input_names(self) -> list[str]:
        """The blobs the Net is fed through."""
        return self.net.input_names

    @property
    def output_names(self) -> list[str]:
        """The Net's outputs."""
        return self.net.output_names

    @property
    def device(self) -> torch.device:
        """Where the Net's parameters live."""
        return self.net.device

    def parameters(self) -> Iterator[torch.nn.Parameter]:
        """The Net's parameters (the weights the engine's graphs were built from)."""
        return self.net.parameters()


def wrap(net: Net, engine: str = "auto", keep: Sequence[str] = ()) -> EngineNet:
    """``net`` as an :class:`EngineNet` run by ``engine`` (the hook the inference commands hand the loops)."""
    return EngineNet(Engine(net, engine, keep=keep))


def load(model: ModelSource, weights: str | os.PathLike | Sequence | Mapping | None = None, engine: str = "auto",
         device: str = "cpu", *, keep: Sequence[str] = (), cache: str | os.PathLike | bool = True,
         threads: int | None = None) -> Engine:
    """A deploy net with its weights, ready to ``forward(**inputs)`` on ``engine`` ("auto", "torch",
    "onnxruntime", "ncnn"); ``cache`` is a folder, True (the default folder) or False (no cache)."""
    from vggproto.net.interpreter import Net
    from vggproto.net.weights import load_arrays
    net = Net(model, None if isinstance(weights, Mapping) else weights, phase="TEST")
    if isinstance(weights, Mapping):
        load_arrays(net, weights, "weights")
    for parameter in net.parameters():
        parameter.requires_grad_(False)
    return Engine(net.to(device), engine, keep=keep, cache=cache, threads=threads)
