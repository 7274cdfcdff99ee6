"""pycaffe's name-keyed views (``net.blobs``, ``net.params``, ``net.layer_dict``, ``net.top_names``...): ordered
dicts whose unknown key is one :class:`~vggproto.errors.PycaffeKeyError` naming what exists, still a KeyError for
scripts that catch one, instead of a bare ``KeyError: 'nope'``."""
from __future__ import annotations

from collections import OrderedDict
from typing import Any, Iterable

from vggproto.errors import PycaffeKeyError, elide

#: how much of the list of existing names one error line shows (a VGG net has 40 blobs)
NAMES_SHOWN = 300


def unknown(call: str, kind: str, where: str, known: Iterable[str]) -> PycaffeKeyError:
    """The error for a ``call`` (``net.blobs['nope']``) naming a ``kind`` that ``where`` (``net.blobs``) does not
    have, listing the names it has."""
    names = ", ".join(known) or "nothing"
    return PycaffeKeyError(f"{elide(call, 120)}: no {kind} of that name; {where} has: {elide(names, NAMES_SHOWN)}")


class Named(OrderedDict):
    """An OrderedDict of ``kind``s (``blob``, ``layer``) shown to scripts as ``what`` (``net.blobs``)."""

    def __init__(self, what: str = "", kind: str = "", items: Iterable[tuple[str, Any]] = ()):
        super().__init__(items)
        self.what, self.kind = what, kind

    def __missing__(self, name: object) -> Any:
        raise unknown(f"{self.what}[{name!r}]", self.kind, self.what, self)
