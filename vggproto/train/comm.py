"""What the training loop needs from its process group, as a typed Protocol.

The solver (:mod:`vggproto.train.solver`) is written against this interface only; one implementation runs on
``torch.distributed`` (:class:`vggproto.train.distributed.ProcessGroupComm`, gloo or NCCL), and a single process
passes none.  Caffe's equivalent is ``P2PSync``/``NCCL`` in ``src/caffe/parallel.cpp``.
"""
from __future__ import annotations

from typing import Any, Protocol

import torch


class Comm(Protocol):
    """The collectives one training iteration uses (every rank calls them in the same order)."""

    def attach(self, params: list[torch.Tensor]) -> None:
        """Install gradient all-reduce hooks on the learnable parameters (Caffe order) to overlap backward."""

    def arm(self) -> None:
        """The next backward pass is the iteration's last: reduce buckets as their gradients complete."""

    def reduce_grads(self, params: list[torch.Tensor]) -> None:
        """Average every parameter's gradient over all ranks."""

    def all_reduce_mean(self, tensors: list[torch.Tensor], extra: list[float]) -> list[float]:
        """Average ``tensors`` in place and the scalars ``extra`` over all ranks; return the averaged scalars."""

    def broadcast(self, tensors: list[torch.Tensor]) -> None:
        """Give every rank rank 0's values of ``tensors`` (in place)."""

    def broadcast_ints(self, values: list[int]) -> list[int]:
        """Rank 0's ``values`` on every rank."""

    def gather_objects(self, value: Any) -> list[Any]:
        """Every rank's ``value``, in rank order (picklable objects)."""
