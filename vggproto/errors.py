"""The one error hierarchy of vggproto.

Every problem a user can cause (a bad file, an unsupported layer, a wrong shape) raises a subclass of
VGGProtoError whose message already says where (file, line, layer, field) and what is supported.  The CLI prints
``str(error)`` on one line and exits 1; anything else escaping is a vggproto bug.
"""
from __future__ import annotations

import re

#: the longest run of characters without a space an error line shows whole (a 5,000-character layer name is a
#: file's content, not something a user needs to read in full)
MAX_WORD = 120


def elide(text: str, limit: int) -> str:
    """``text`` cut to about ``limit`` characters, its middle replaced by ``...`` (the start and end say most)."""
    text = " ".join(text.split()) if "\n" in text else text
    if len(text) <= limit:
        return text
    keep = (limit - 5) // 2
    return f"{text[:keep]} ... {text[-keep:]}"


def elide_words(message: str, limit: int = MAX_WORD) -> str:
    """``message`` with every run of over ``limit`` non-space characters elided in its middle, so a huge name
    or value from a file keeps an error to one readable line."""
    return re.sub(r"\S{%d,}" % (limit + 1), lambda word: elide(word.group(0), limit), message)


class VGGProtoError(Exception):
    """Base class: a user-facing error with a complete one-line message."""


class PrototxtError(VGGProtoError):
    """A net or solver description that cannot be parsed or is semantically wrong.

    ``path``, ``line``, ``col`` locate the problem in a text file; ``layer`` names the layer when known.
    """

    def __init__(self, message: str, path: str | None = None, line: int | None = None,
                 col: int | None = None, layer: str | None = None, layer_type: str | None = None):
        self.path, self.line, self.col = path, line, col
        self.layer, self.layer_type, self.reason = layer, layer_type, message
        super().__init__(self._format())

    def _format(self) -> str:
        where = self.path or "<text>"
        if self.line is not None:
            where += f":{self.line}"
            if self.col is not None:
                where += f":{self.col}"
        who = ""
        if self.layer is not None:
            who = f" layer '{elide(self.layer, 60)}'" + (f" ({self.layer_type})" if self.layer_type else "") + ":"
        return f"{where}:{who} {self.reason}"


class NetError(PrototxtError):
    """A net that parses but cannot be built: unknown layer type, missing bottom, impossible shape."""


class WeightsError(VGGProtoError):
    """A weight file that is unreadable, corrupt, or does not fit the net."""


class SolverError(VGGProtoError):
    """A solver description or solver state that cannot be used."""


class DataError(VGGProtoError):
    """Training or test data that is missing, undecodable or inconsistent."""


class DataShapeUnknown(DataError):
    """A data layer whose top shapes the prototxt does not give: only its data would tell, and a shapes-only
    build (``info``, ``draw``: Caffe's draw_net reads no data either) reads none."""


class InputShapeError(NetError, ValueError):
    """Inputs of a shape the net cannot take (Caffe's Net::Reshape check, here after a reshaped input): located
    at the first layer that cannot take them, and a ValueError too, as numpy's copy into a pycaffe blob is."""


class PycaffeError(VGGProtoError):
    """A ``vggproto.pycaffe`` call with an argument that does not fit the net: an unknown blob or layer name, an
    array of the wrong shape, a phase that is neither TRAIN nor TEST.  The message names what exists."""

    def __str__(self) -> str:   # KeyError's own str() would show the message quoted, as a repr
        return str(self.args[0]) if self.args else ""


class PycaffeKeyError(PycaffeError, KeyError):
    """An unknown name; still a KeyError, so a pycaffe script's ``except KeyError`` keeps working."""


class PycaffeValueError(PycaffeError, ValueError):
    """A value of the wrong shape or kind; still a ValueError, as numpy's or pycaffe's own would be."""


class PycaffeTypeError(PycaffeError, TypeError):
    """A call with the wrong arguments (``caffe.Net`` without a phase); still a TypeError, as Python's is."""
