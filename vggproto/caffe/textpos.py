"""Which field a place in a prototxt belongs to: the field path at a parse error, the lines a field is set on.

protobuf's text-format errors give only a line, a column and a terse reason (``Couldn't parse integer: four``);
a user should not have to count columns to learn that it was ``convolution_param.num_output``.  This module walks
the text with a tokenizer of its own (the grammar of protobuf's text format: ``name [:] value``, ``name [:] {...}``,
``name: [v, v]``) and keeps the stack of enclosing fields, so an error, a float beyond its field's range or a
solver value found after parsing can name the field and point at its line.
"""
from __future__ import annotations

import math
import re
from typing import Iterator, NamedTuple

from google.protobuf.descriptor import Descriptor, FieldDescriptor

_TOKEN = re.compile(r'(?P<nl>\n)|[ \t\r\f\v]+|#[^\n]*'
                    r'|(?P<str>"(?:[^"\\\n]|\\.)*"?|\'(?:[^\'\\\n]|\\.)*\'?)'
                    r'|(?P<punct>[{}<>\[\]:,;])'
                    r'|(?P<word>[^\s{}<>\[\]:,;"\'#]+)')

#: the values a field of each integer type holds (protobuf's text parser refuses the others, as Caffe's does)
INT_RANGES: dict[int, tuple[str, int, int]] = {
    FieldDescriptor.TYPE_INT32: ("int32", -2 ** 31, 2 ** 31 - 1),
    FieldDescriptor.TYPE_SINT32: ("sint32", -2 ** 31, 2 ** 31 - 1),
    FieldDescriptor.TYPE_SFIXED32: ("sfixed32", -2 ** 31, 2 ** 31 - 1),
    FieldDescriptor.TYPE_UINT32: ("uint32", 0, 2 ** 32 - 1),
    FieldDescriptor.TYPE_FIXED32: ("fixed32", 0, 2 ** 32 - 1),
    FieldDescriptor.TYPE_INT64: ("int64", -2 ** 63, 2 ** 63 - 1),
    FieldDescriptor.TYPE_SINT64: ("sint64", -2 ** 63, 2 ** 63 - 1),
    FieldDescriptor.TYPE_SFIXED64: ("sfixed64", -2 ** 63, 2 ** 63 - 1),
    FieldDescriptor.TYPE_UINT64: ("uint64", 0, 2 ** 64 - 1),
    FieldDescriptor.TYPE_FIXED64: ("fixed64", 0, 2 ** 64 - 1),
}
FLOAT_MAX = 3.4028234663852886e38  # the largest finite float32
#: a number literal that may overflow a float (an exponent of two digits or more, or 39 digits): only then is the
#: whole text walked for one
_MAYBE_HUGE = re.compile(r"\d[eE]\+?\d{2,}|\d{39,}")


class Token(NamedTuple):
    """One token: its text and where it starts (line and column from 1, as protobuf's errors count them)."""

    text: str
    line: int
    col: int


class Value(NamedTuple):
    """A value token and the path of the field it sets (enclosing message fields first)."""

    token: Token
    path: tuple[str, ...]


def tokens(text: str) -> Iterator[Token]:
    """The tokens of ``text``: words (names, numbers, identifiers), strings and punctuation, without comments."""
    line, start = 1, 0
    for match in _TOKEN.finditer(text):
        if match.group("nl"):
            line, start = line + 1, match.end()
        elif match.lastgroup in ("str", "punct", "word"):
            yield Token(match.group(0), line, match.start() - start + 1)


def walk(text: str) -> Iterator[tuple[Token, tuple[str, ...], bool]]:
    """Each token with the field path in force there and whether it is a value (True) or a name/punctuation."""
    stack: list[tuple[str, bool]] = []
    name, expect_value, in_list = "", False, False
    for tok in tokens(text):
        kind = tok.text[0]
        if not expect_value:
            if kind in "}>" and stack:
                name, in_list = stack.pop()
                expect_value = in_list
            elif kind not in "{}<>[]:,;\"'":
                name, expect_value = tok.text, True
            yield tok, tuple(n for n, _ in stack) + (name,), False
            continue
        if kind in "{<":
            stack.append((name, in_list))
            expect_value, in_list = False, False
        elif kind == "[":
            in_list = True
        elif kind == "]":
            expect_value, in_list = False, False
        elif kind not in ":,;}>":
            yield tok, tuple(n for n, _ in stack) + (name,), True
            expect_value = in_list
            continue
        yield tok, tuple(n for n, _ in stack) + (name,), False


def path_at(text: str, line: int, col: int) -> tuple[tuple[str, ...], Token | None]:
    """The field path in force at ``line``:``col`` (where protobuf reported an error) and the token there."""
    path: tuple[str, ...] = ()
    for tok, tok_path, _ in walk(text):
        if (tok.line, tok.col) >= (line, col):
            return path or tok_path, tok if (tok.line, tok.col) == (line, col) else None
        path = tok_path
    return path, None


def values_of(text: str, path: tuple[str, ...]) -> list[Token]:
    """Every value token that sets the field at ``path``, in file order (a solver's ``stepvalue``s, say)."""
    return [tok for tok, tok_path, is_value in walk(text) if is_value and tok_path == path]


def resolve(descriptor: Descriptor, path: tuple[str, ...]) -> FieldDescriptor | None:
    """The field descriptor ``path`` names from the message ``descriptor`` (None when a name is not a field)."""
    field = None
    for name in path:
        if descriptor is None or name not in descriptor.fields_by_name:
            return None
        field = descriptor.fields_by_name[name]
        descriptor = field.message_type
    return field


def float_overflow(text: str, descriptor: Descriptor) -> Value | None:
    """The first finite number written for a ``float``/``double`` field that its type cannot hold (protobuf and
    Caffe read it as infinity without a word), or None."""
    if not _MAYBE_HUGE.search(text):
        return None
    for tok, path, is_value in walk(text):
        if not is_value or not _MAYBE_HUGE.search(tok.text):
            continue
        try:
            number = abs(float(tok.text.rstrip("fF")))
        except ValueError:
            continue
        field = resolve(descriptor, path)
        if field is None:
            continue
        if (field.type == FieldDescriptor.TYPE_FLOAT and number > FLOAT_MAX) or \
                (field.type == FieldDescriptor.TYPE_DOUBLE and math.isinf(number)):
            return Value(tok, path)
    return None


def field_range(field: FieldDescriptor | None) -> str:
    """``a uint32 (0 to 4294967295)``: the type of a numeric field and the values it holds, for an error."""
    if field is None:
        return "this field's type"
    if field.type in INT_RANGES:
        kind, low, high = INT_RANGES[field.type]
        return f"{'an' if kind.startswith('int') else 'a'} {kind} ({low} to {high})"
    if field.type == FieldDescriptor.TYPE_FLOAT:
        return f"a float (magnitude up to {FLOAT_MAX:.7g}, or inf)"
    if field.type == FieldDescriptor.TYPE_DOUBLE:
        return "a double (magnitude up to 1.797693e+308, or inf)"
    return "this field's type"
