"""The schemas of Caffe's forks as named dialects of one superset schema: detection, wire renumbering, fork schemas.

Many published Caffe models were trained with forks (SSD, SegNet, ENet, PSPNet, Faster R-CNN, OpenCV's own proto)
whose ``caffe.proto`` adds fields and messages.  ``proto/caffe.proto`` holds BVLC's schema plus every fork field
listed here, so one set of message classes reads them all.  Text is unambiguous (a field is named), but on the
wire a fork may put a field at a number BVLC or another fork uses for something else: the forks' ``ceil_mode``
(bool, default true) sits at ``PoolingParameter`` 13, where BVLC has ``round_mode`` (enum, CEIL = 0) with the
opposite meaning for the same varint.  Such a field gets a free number in the superset schema, and the
dialect table (:mod:`vggproto.caffe.dialect_table`, data) maps the fork's own number to it: binary files of that
fork are renumbered on the wire before protobuf reads them (:func:`to_superset`) and after vggproto writes them
(:func:`from_superset`), so a fork's caffemodel reads byte-compatibly and what vggproto writes for a fork net is
readable by that fork.

``bvlc`` is the default.  A text net that uses a field BVLC lacks selects the dialect that has it, with one
warning naming the fork (:func:`detect`); ``dialect=`` (``--dialect``) forces one, and a field of another fork is
then an error naming it.
"""
from __future__ import annotations

import logging
import re
from functools import lru_cache

from google.protobuf import descriptor as pb_descriptor
from google.protobuf import descriptor_pb2
from google.protobuf import message as pb_message

from vggproto.caffe.dialect_table import BVLC, DIALECTS, EXTRA_MESSAGES, OWN_FIELD
from vggproto.caffe.proto import caffe_pb2
from vggproto.caffe.wire import LENGTH, VARINT, encode_tag, encode_varint, iter_fields
from vggproto.errors import PrototxtError

log = logging.getLogger("vggproto.caffe.dialects")


# ----------------------------------------------------------------------------------------------------------------
# Which dialect a parsed message needs
# ----------------------------------------------------------------------------------------------------------------

@lru_cache(maxsize=1)
def _fork_fields_by_key() -> dict[tuple[str, str], list[str]]:
    index: dict[tuple[str, str], list[str]] = {}
    for dialect in DIALECTS.values():
        for f in dialect.fields:
            if not f.bvlc:
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


# ----------------------------------------------------------------------------------------------------------------
# A fork's own schema, rebuilt from the table (for tests and tools that want to read a file as that fork does)
# ----------------------------------------------------------------------------------------------------------------

def fork_schema(dialect: str) -> descriptor_pb2.FileDescriptorProto:
    """``proto/caffe.proto`` as the fork ``dialect`` has it: BVLC's messages and fields (without vggproto's
    extension), plus the fork's fields at the fork's own numbers; a BVLC field the fork reuses the number of is
    left out.  ``fork_schema("bvlc")`` is plain BVLC Caffe's schema."""
    proto = descriptor_pb2.FileDescriptorProto()
    caffe_pb2.DESCRIPTOR.CopyToProto(proto)
    proto.name = f"{dialect}_caffe.proto"
    mine: dict[str, dict[str, int]] = {}
    for f in DIALECTS[dialect].fields:
        mine.setdefault(f.message, {})[f.name] = f.number
    every_fork_field = {(f.message, f.name) for d in DIALECTS.values() for f in d.fields if not f.bvlc}
    kept = [m for m in proto.message_type if m.name not in EXTRA_MESSAGES or m.name in mine]
    del proto.message_type[:]
    proto.message_type.extend(kept)
    for message in proto.message_type:
        numbers = mine.get(message.name, {})
        fields = []
        for field in message.field:
            if field.name in numbers:
                field.number = numbers[field.name]
                fields.append(field)
            elif (message.name, field.name) not in every_fork_field and (message.name, field.name) != OWN_FIELD \
                    and message.name not in EXTRA_MESSAGES:
                fields.append(field)
        taken = {f.number for f in fields if f.name in numbers}
        fields = [f for f in fields if f.name in numbers or f.number not in taken]
        del message.field[:]
        message.field.extend(fields)
    return proto
