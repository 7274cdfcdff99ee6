"""The schemas of Caffe's forks as named dialects of one superset schema, in one table.

Many published Caffe models were trained with forks (SSD, SegNet, ENet, PSPNet, Faster R-CNN, OpenCV's own proto)
whose ``caffe.proto`` adds fields and messages.  ``proto/caffe.proto`` holds BVLC's schema plus every fork field
listed here, so one set of message classes reads them all.  Text is unambiguous (a field is named), but on the
wire a fork may put a field at a number BVLC or another fork uses for something else: the forks' ``ceil_mode``
(bool, default true) sits at ``PoolingParameter`` 13, where BVLC has ``round_mode`` (enum, CEIL = 0) with the
opposite meaning for the same varint.  Such a field gets a free number in the superset schema, and
:class:`Dialect` maps the fork's own number to it: binary files of that fork are renumbered on the wire before
protobuf reads them (:func:`to_superset`) and after vggproto writes them (:func:`from_superset`), so a fork's
caffemodel reads byte-compatibly and what vggproto writes for a fork net is readable by that fork.

``bvlc`` is the default.  A text net that uses a field BVLC lacks selects the dialect that has it, with one
warning naming the fork (:func:`detect`); ``dialect=`` (``--dialect``) forces one, and a field of another fork is
then an error naming it.
"""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from functools import lru_cache

from google.protobuf import descriptor as pb_descriptor
from google.protobuf import message as pb_message

from vggproto.caffe.proto import caffe_pb2
from vggproto.caffe.wire import LENGTH, VARINT, encode_tag, encode_varint, iter_fields
from vggproto.errors import PrototxtError

log = logging.getLogger("vggproto.caffe.dialects")

BVLC = "bvlc"


@dataclass(frozen=True)
class ForkField:
    """A field a fork adds to a message: ``number`` is the fork's own wire number, ``superset`` the one it has in
    ``proto/caffe.proto`` (the same unless that number means something else in BVLC or another fork)."""

    message: str        # the containing message, e.g. "PoolingParameter"
    name: str           # e.g. "ceil_mode"
    number: int         # the fork's wire number
    superset: int       # the number in vggproto's superset schema

    def __post_init__(self) -> None:
        field = _message(self.message).fields_by_name.get(self.name)
        if field is None or field.number != self.superset:
            raise RuntimeError(f"dialect table: {self.message}.{self.name} is not field {self.superset} of "
                               "proto/caffe.proto")


@dataclass(frozen=True)
class Dialect:
    """One fork's schema: its fields beyond BVLC's, where its source is, and the layer types it adds."""

    name: str
    fork: str                          # how messages name the fork
    source: str                        # repository and path of its caffe.proto (docs/notes/forks.md: commit)
    fields: tuple[ForkField, ...]
    layer_types: tuple[str, ...] = ()

    def renumbering(self) -> dict[str, dict[int, int]]:
        """``{message full name: {fork number: superset number}}`` for the fields whose numbers differ."""
        table: dict[str, dict[int, int]] = {}
        for f in self.fields:
            if f.number != f.superset:
                table.setdefault(f"caffe.{f.message}", {})[f.number] = f.superset
        return table


def _message(name: str) -> pb_descriptor.Descriptor:
    return caffe_pb2.DESCRIPTOR.message_types_by_name[name]


def _layer_params(*names_and_numbers: tuple[str, int]) -> tuple[ForkField, ...]:
    """LayerParameter fields kept at the fork's number (no clash)."""
    return tuple(ForkField("LayerParameter", name, number, number) for name, number in names_and_numbers)


_CEIL_MODE = ForkField("PoolingParameter", "ceil_mode", 13, 1013)

#: Every dialect, in the order auto-detection prefers them.  Field facts: docs/notes/forks.md.
DIALECTS: dict[str, Dialect] = {d.name: d for d in (
    Dialect(BVLC, "BVLC Caffe", "BVLC/caffe:src/caffe/proto/caffe.proto", ()),
    Dialect("opencv", "OpenCV's dnn (opencv-caffe.proto)",
            "opencv/opencv:modules/dnn/src/caffe/opencv-caffe.proto", (_CEIL_MODE,)),
)}


# ----------------------------------------------------------------------------------------------------------------
# Which dialect a parsed message needs
# ----------------------------------------------------------------------------------------------------------------

def _fork_fields_by_key() -> dict[tuple[str, str], list[str]]:
    index: dict[tuple[str, str], list[str]] = {}
    for dialect in DIALECTS.values():
        for f in dialect.fields:
            index.setdefault((f.message, f.name), []).append(dialect.name)
    return index


def fork_fields_used(message: pb_message.Message) -> list[tuple[str, str]]:
    """``(message name, field name)`` of every fork field set anywhere in ``message``, in first-use order."""
    index, found = _fork_fields_by_key(), {}

    def walk(msg: pb_message.Message) -> None:
        for field, value in msg.ListFields():
            key = (msg.DESCRIPTOR.name, field.name)
            if key in index:
                found.setdefault(key, None)
            if field.type == field.TYPE_MESSAGE:
                for item in ([value] if isinstance(value, pb_message.Message) else value):
                    walk(item)
    walk(message)
    return list(found)


def _line_of(text: str | None, name: str) -> int | None:
    match = re.search(rf"(?m)^[^#\n]*\b{re.escape(name)}\s*[:{{]", text or "")
    return text.count("\n", 0, match.start()) + 1 if match else None


def detect(message: pb_message.Message, dialect: str | None = None, *, path: str | None = None,
           text: str | None = None, warn: bool = True) -> str:
    """The dialect ``message`` is read in: ``dialect`` if given (a field it lacks is a PrototxtError naming the
    field and the fork that has it), else the first dialect that has every fork field used (one warning, unless
    ``warn`` is off: writers pick the dialect of what they write silently)."""
    if dialect is not None and dialect not in DIALECTS:
        raise PrototxtError(f"unknown dialect '{dialect}'; supported: {', '.join(DIALECTS)}", path=path)
    used = fork_fields_used(message)
    if not used:
        return dialect or BVLC
    index = _fork_fields_by_key()
    if dialect is not None:
        for message_name, name in used:
            if dialect not in index[(message_name, name)]:
                raise PrototxtError(_foreign(message_name, name, index, dialect), path=path,
                                    line=_line_of(text, name))
        return dialect
    candidates = [d for d in DIALECTS if all(d in index[key] for key in used)]
    if not candidates:
        forks = {k: index[k] for k in used}
        raise PrototxtError("fields of different forks in one file: " + "; ".join(
            f"'{name}' ({', '.join(forks[(m, name)])})" for m, name in used), path=path)
    chosen = DIALECTS[candidates[0]]
    if not warn:
        return chosen.name
    first = used[0][1]
    line = _line_of(text, first)
    where = f"{path or '<text>'}:{line}: " if line else f"{path or '<text>'}: "
    log.warning("%s'%s' is a field of %s; reading with that dialect (--dialect %s)", where, first, chosen.fork,
                chosen.name)
    return chosen.name


def _foreign(message_name: str, name: str, index: dict[tuple[str, str], list[str]], dialect: str) -> str:
    owners = ", ".join(f"{DIALECTS[d].fork} (--dialect {d})" for d in index[(message_name, name)])
    return (f"unknown field '{name}' in caffe.{message_name} for dialect '{dialect}' "
            f"({DIALECTS[dialect].fork}); it is a field of {owners}")


# ----------------------------------------------------------------------------------------------------------------
# Renumbering on the wire
# ----------------------------------------------------------------------------------------------------------------

@lru_cache(maxsize=None)
def _plan(dialect: str, to_fork: bool) -> dict[str, dict[int, int]]:
    table = DIALECTS[dialect].renumbering()
    if to_fork:
        table = {m: {s: f for f, s in numbers.items()} for m, numbers in table.items()}
    return table


@lru_cache(maxsize=None)
def _reaches(descriptor: pb_descriptor.Descriptor, targets: frozenset[str]) -> bool:
    """Whether a message of this type can contain (at any depth) a message whose fields are renumbered."""
    seen, todo = set(), [descriptor]
    while todo:
        d = todo.pop()
        if d.full_name in targets:
            return True
        seen.add(d.full_name)
        todo += [f.message_type for f in d.fields if f.message_type is not None and f.message_type.full_name
                 not in seen]
    return False


def _rewrite(data: bytes | memoryview, descriptor: pb_descriptor.Descriptor, plan: dict[str, dict[int, int]],
             to_fork: bool) -> bytes:
    numbers = plan.get(descriptor.full_name, {})
    targets = frozenset(plan)
    out = bytearray()
    for raw in iter_fields(data, 0, len(data)):
        number = numbers.get(raw.number, raw.number)
        schema_number = raw.number if to_fork else number    # the number the superset schema knows it by
        field = descriptor.fields_by_number.get(schema_number)
        if raw.wire_type == LENGTH and field is not None and field.message_type is not None \
                and _reaches(field.message_type, targets):
            inner = _rewrite(data[raw.data_start:raw.end], field.message_type, plan, to_fork)
            out += encode_tag(number, LENGTH) + encode_varint(len(inner)) + inner
        elif number == raw.number:
            out += data[raw.start:raw.end]
        elif raw.wire_type == VARINT:
            out += encode_tag(number, VARINT) + encode_varint(raw.value)
        elif raw.wire_type == LENGTH:
            out += encode_tag(number, LENGTH) + encode_varint(raw.end - raw.data_start) + data[raw.data_start:raw.end]
        else:
            out += encode_tag(number, raw.wire_type) + data[raw.data_start:raw.end]
    return bytes(out)


def to_superset(data: bytes, message_type: type[pb_message.Message], dialect: str) -> bytes:
    """A fork's serialized ``message_type`` with its fields renumbered to the superset schema."""
    plan = _plan(dialect, False)
    return _rewrite(memoryview(data), message_type.DESCRIPTOR, plan, False) if plan else data


def from_superset(data: bytes, message_type: type[pb_message.Message], dialect: str) -> bytes:
    """A serialized ``message_type`` with the fork's own field numbers, as that fork writes it."""
    plan = _plan(dialect, True)
    return _rewrite(memoryview(data), message_type.DESCRIPTOR, plan, True) if plan else data
