"""Reading and writing Caffe net and solver descriptions, text or binary, with located errors.

Text is parsed with protobuf's text format (what Caffe's ``TextFormat`` accepts: comments, either quote style,
optional colon before ``{``).  Binary files are plain serialized messages.  Every net is upgraded on read as
Caffe's ``UpgradeNetAsNeeded`` does (see :mod:`vggproto.caffe.upgrade`), so callers always see V2 ``layer`` entries.
Large caffemodels should be read with :func:`vggproto.weights.caffemodel.read_weights`, which does not decode
blobs through protobuf.
"""
from __future__ import annotations

import difflib
import os
import re
from pathlib import Path
from typing import NamedTuple, Union

from google.protobuf import message as pb_message
from google.protobuf import text_format

from vggproto.caffe import dialects, plugins, textpos
from vggproto.caffe.files import atomic_write_bytes, describe, sniff
from vggproto.caffe.proto import caffe_pb2
from vggproto.errors import PrototxtError, SolverError, elide

PathOrText = Union[str, os.PathLike, bytes]
TEXT_SUFFIXES = {".prototxt", ".pbtxt", ".txt", ".solver"}
BINARY_SUFFIXES = {".caffemodel", ".binaryproto", ".pb", ".solverstate"}


# --------------------------------------------------------------------------------------------------------------
# Loading raw content
# --------------------------------------------------------------------------------------------------------------

def load_source(source: PathOrText) -> tuple[bytes, str | None]:
    """Return (content, path) for a path, a text string or raw bytes.

    A ``str`` that names an existing file, or looks like a file name (no newline, no brace), is a path.
    """
    if isinstance(source, bytes):
        return source, None
    if isinstance(source, os.PathLike) or _looks_like_path(source):
        path = os.fspath(source)
        try:
            return Path(path).read_bytes(), path
        except FileNotFoundError:
            raise PrototxtError("no such file", path=path) from None
        except IsADirectoryError:
            raise PrototxtError("is a directory, expected a file", path=path) from None
        except OSError as exc:
            raise PrototxtError(f"cannot read: {exc.strerror}", path=path) from None
    return source.encode("utf-8"), None


def _looks_like_path(text: str) -> bool:
    return os.path.exists(text) or not any(mark in text for mark in ("{", ":", "\n"))


def sniff_binary(content: bytes, path: str | None) -> bool:
    """Decide whether ``content`` is a binary protobuf (True) or text format (False)."""
    kind = sniff(content[:16])
    if kind is not None and kind != "safetensors":
        raise PrototxtError(f"this is {describe(kind)}, not a Caffe prototxt or caffemodel", path=path)
    suffix = Path(path).suffix.lower() if path else ""
    if suffix in TEXT_SUFFIXES:
        return False
    if suffix in BINARY_SUFFIXES:
        return True
    head = content[:4096]
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as exc:
        if exc.start < len(head) - 4:  # a multi-byte character cut at the end of the sample is still text
            return True
    return b"\x00" in head


# --------------------------------------------------------------------------------------------------------------
# Text format
# --------------------------------------------------------------------------------------------------------------

_FIELD_ERR = re.compile(r'has no field named "([^"]+)"')
_ENUM_ERR = re.compile(r'Enum type "([^"]+)" has no value (?:named|with number) (-?\w+)')
_QUOTED_FIELD = re.compile(r"'(\w+): ")


def parse_text(text: str, message: pb_message.Message, path: str | None = None) -> pb_message.Message:
    """Merge prototxt ``text`` into ``message``; errors carry path:line:col and the enclosing layer name."""
    try:
        text_format.Parse(text, message, allow_unknown_extension=False)
    except text_format.ParseError as exc:
        line, col = exc.GetLine(), exc.GetColumn()
        lines = text.split("\n")
        line_text = lines[line - 1] if line and 0 < line <= len(lines) else None
        reason = _explain(str(exc), message, line_text, col)
        layer = layer_name_at_line(text, line) if line else None
        if line and col and not _FIELD_ERR.search(str(exc)) and not _ENUM_ERR.search(str(exc)):
            reason = _name_the_field(reason, text, (line, col), message, layer is not None)
        raise PrototxtError(reason, path=path, line=line, col=col, layer=layer) from None
    _refuse_float_overflow(text, message, path)
    return message


_PARSE_INT = re.compile(r"^Couldn't parse integer: (.*)$", re.S)
_PARSE_FLOAT = re.compile(r"^Couldn't parse float: (.*)$", re.S)
_OUT_OF_RANGE = re.compile(r"^Value out of range: (.*)$", re.S)


def _name_the_field(reason: str, text: str, where: tuple[int, int], message: pb_message.Message,
                    in_layer: bool) -> str:
    """protobuf's terse reason (``Couldn't parse integer: four``) said in the words of the field it is about:
    ``convolution_param.num_output: expected an integer, got "four"``; out-of-range values give the field's range."""
    path, token = textpos.path_at(text, *where)
    if not path or not path[-1]:
        return reason
    field = textpos.resolve(message.DESCRIPTOR, path)
    got = _quoted(token.text) if token is not None else "nothing"
    if _PARSE_INT.match(reason):
        reason = f"expected an integer, got {_quoted(_PARSE_INT.match(reason).group(1))}"
    elif _PARSE_FLOAT.match(reason):
        reason = f"expected a number, got {_quoted(_PARSE_FLOAT.match(reason).group(1))}"
    elif _OUT_OF_RANGE.match(reason):
        reason = f"{elide(_OUT_OF_RANGE.match(reason).group(1), 60)} is out of range for {textpos.field_range(field)}"
    elif reason.startswith('Expected "true" or "false"'):
        reason = f"expected true or false, got {got}"
    elif reason.startswith('Expected ":"'):
        reason = f'expected ":" after the field name, got {got}'
    shown = path[1:] if in_layer and path[0] in ("layer", "layers") and len(path) > 1 else path
    return f"{elide('.'.join(shown), 120)}: {reason}"


def _quoted(value: str) -> str:
    """A value from the file for an error: elided, in double quotes unless it is already a quoted string."""
    value = elide(value, 60)
    return f"the string {value}" if value[:1] in "\"'" and len(value) > 1 else f'"{value}"'


def _refuse_float_overflow(text: str, message: pb_message.Message, path: str | None) -> None:
    """A finite number too large for its float field: protobuf (Python, and Caffe's C++) reads it as infinity
    without a word, which is never what a user who wrote 1e39 meant."""
    found = textpos.float_overflow(text, message.DESCRIPTOR)
    if found is None:
        return
    tok, field_path = found
    layer = layer_name_at_line(text, tok.line)
    shown = field_path[1:] if layer is not None and field_path[0] in ("layer", "layers") else field_path
    field = textpos.resolve(message.DESCRIPTOR, field_path)
    raise PrototxtError(f"{'.'.join(shown)}: {elide(tok.text, 60)} is out of range for {textpos.field_range(field)}"
                        f"; Caffe would read it as infinity (write inf if that is meant)",
                        path=path, line=tok.line, col=tok.col, layer=layer)


MAX_REASON = 200  # protobuf quotes the whole offending line: a 10 MB line of garbage must not be a 10 MB message


def _strip_quoted_line(reason: str, line_text: str | None) -> str:
    """Drop protobuf's ``'<the whole line>': `` prefix: the error already gives line and column."""
    if line_text is not None and reason.startswith(f"'{line_text}': "):
        return reason[len(line_text) + 4:]
    return re.sub(r"^'.*?': (?=[A-Z]|Message type|Enum type|Expected|Couldn't|Invalid|Non-)", "", reason, count=1)


def _field_before(line_text: str | None, col: int | None) -> str | None:
    """The field whose value starts at ``col`` of ``line_text`` (the ``name:`` just before it), or None."""
    if not line_text or not col:
        return None
    found = re.search(r"(\w+)\s*:?\s*$", line_text[:max(col - 1, 0)])
    return found.group(1) if found else None


def _explain(raw: str, message: pb_message.Message, line_text: str | None = None, col: int | None = None) -> str:
    """protobuf's parse error made short and specific: no quoted line, the field named, the choices listed;
    what comes from the file (a name, a value, protobuf's own text) is elided, our explanation never."""
    reason = _strip_quoted_line(re.sub(r"^\d+:\d+ : ", "", raw), line_text)
    field = _FIELD_ERR.search(reason)
    if field:
        msg_type = re.search(r'Message type "([^"]+)"', reason)
        name = elide(field.group(1), 60)
        known = _field_names(msg_type.group(1)) if msg_type else []
        close = difflib.get_close_matches(name, known, n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        where = msg_type.group(1) if msg_type else "this message"
        reason = f"unknown field '{name}' in {where}{hint} (not in BVLC Caffe's schema nor a known fork's)"
        return reason + _wrong_kind_hint(where, name)
    enum = _ENUM_ERR.search(reason)
    if enum:
        values = _enum_values(enum.group(1))
        quoted = _QUOTED_FIELD.search(raw)
        field_name = _field_before(line_text, col) or (quoted.group(1) if quoted else None)
        where = f"field '{field_name}' ({enum.group(1)})" if field_name else f"enum {enum.group(1)}"
        return f"unknown value {elide(enum.group(2), 60)} for {where}; supported: {', '.join(values)}"
    return elide(reason, MAX_REASON)


def _wrong_kind_hint(where: str, name: str) -> str:
    """Say so when a solver is read as a net or the other way round."""
    if where == "caffe.NetParameter" and name in _field_names("caffe.SolverParameter"):
        return "; this looks like a solver, not a net"
    if where == "caffe.SolverParameter" and name in _field_names("caffe.NetParameter"):
        return "; this looks like a net, not a solver"
    return ""


def _field_names(full_name: str) -> list[str]:
    desc = caffe_pb2.DESCRIPTOR.message_types_by_name.get(full_name.split(".")[-1])
    if desc is None:
        for top in caffe_pb2.DESCRIPTOR.message_types_by_name.values():
            for nested in top.nested_types:
                if nested.full_name == full_name:
                    desc = nested
    return [f.name for f in desc.fields] if desc else []


def _enum_values(full_name: str) -> list[str]:
    short = full_name.split(".")[-1]
    for msg in caffe_pb2.DESCRIPTOR.message_types_by_name.values():
        if short in msg.enum_types_by_name:
            return [v.name for v in msg.enum_types_by_name[short].values]
    enum = caffe_pb2.DESCRIPTOR.enum_types_by_name.get(short)
    return [v.name for v in enum.values] if enum else []


def layer_lines(text: str) -> list[tuple[int, str | None]]:
    """Return (line number, layer name) of each top-level ``layer``/``layers`` block, in order, from the one
    text-format walker (:func:`vggproto.caffe.textpos.walk`).

    Used to point errors found after parsing (unknown layer type, shape mismatch) at the right line.
    """
    found: list[tuple[int, str | None]] = []
    for tok, path, is_value in textpos.walk(text):
        if not is_value and len(path) == 1 and path[0] == tok.text in ("layer", "layers"):
            found.append((tok.line, None))
        elif is_value and len(path) == 2 and path[0] in ("layer", "layers") and path[1] == "name" and found \
                and found[-1][1] is None and tok.text[:1] in "\"'":
            found[-1] = (found[-1][0], tok.text[1:-1])
    return found


def layer_name_at_line(text: str, line: int) -> str | None:
    """Name of the top-level layer whose block contains ``line`` (None outside layers)."""
    name = None
    for start, layer_name in layer_lines(text):
        if start <= line:
            name = layer_name
    return name


# --------------------------------------------------------------------------------------------------------------
# Nets
# --------------------------------------------------------------------------------------------------------------

class ParsedNet(NamedTuple):
    """A net as read: the message, the file it came from (None for text given directly), the text (None for
    binary input, kept to locate layers by line) and the dialect of the fork whose schema it follows."""

    net: caffe_pb2.NetParameter
    path: str | None
    text: str | None
    dialect: str


def parse_net(source: PathOrText, upgrade: bool = True, dialect: str | None = None) -> ParsedNet:
    """Parse a net (text or binary, detected) in ``dialect`` (None: BVLC, or the fork whose fields it uses)."""
    content, path = load_source(source)
    net = caffe_pb2.NetParameter()
    text, chosen = _parse_in_dialect(content, path, net, dialect, "net (caffemodel)")
    if upgrade:
        from vggproto.caffe.upgrade import upgrade_net
        upgrade_net(net, path=path)
    if path is not None and not net.layer and not net.layers and not net.input:
        raise PrototxtError("no layers: an empty net (expected `layer { ... }` blocks)", path=path)
    return ParsedNet(net, path, text, chosen)


def _parse_in_dialect(content: bytes, path: str | None, message: pb_message.Message, dialect: str | None,
                      what: str) -> tuple[str | None, str]:
    """Parse text or binary ``content`` into ``message``; return (the text or None, the dialect it is in).
    A binary file of a fork is parsed again with the fork's field numbers mapped to the superset schema's."""
    if not sniff_binary(content, path):
        text = _decode(content, path)
        stripped, blocks = plugins.extract_blocks(text) if isinstance(message, caffe_pb2.NetParameter) else (text, [])
        parse_text(stripped, message, path)
        plugins.attach_blocks(message, blocks, path)
        return text, dialects.detect(message, dialect, path=path, text=text)
    _parse_binary(content, message, path, what)
    chosen = dialects.detect(message, dialect, path=path)
    if chosen != dialects.BVLC:
        message.Clear()
        _parse_binary(dialects.to_superset(content, type(message), chosen), message, path, what)
    return None, chosen


def read_net(source: PathOrText, upgrade: bool = True, dialect: str | None = None) -> caffe_pb2.NetParameter:
    """Read a net from a path, prototxt text or bytes (text or binary detected), upgraded as Caffe does."""
    return parse_net(source, upgrade, dialect).net


def write_net(net: caffe_pb2.NetParameter, path: str | os.PathLike, dialect: str | None = None) -> None:
    """Write ``net`` as text (``.prototxt``) or binary (``.caffemodel``, ``.binaryproto``, ``.pb``); binary
    files use the field numbers of ``dialect`` (None: the fork whose fields the net uses, else BVLC's)."""
    write_message(net, path, dialects.detect(net, dialect, warn=False))


def _decode(content: bytes, path: str | None) -> str:
    try:
        return content.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = content.count(b"\n", 0, exc.start) + 1
        col = exc.start - (content.rfind(b"\n", 0, exc.start) + 1) + 1
        raise PrototxtError(f"not UTF-8 text: byte 0x{content[exc.start]:02x} (offset {exc.start}) is not valid "
                            f"UTF-8; strings and comments must be UTF-8", path=path, line=line, col=col) from None


def _parse_binary(content: bytes, message: pb_message.Message, path: str | None, what: str) -> None:
    try:
        message.ParseFromString(content)
    except pb_message.DecodeError as exc:
        raise PrototxtError(f"not a valid binary {what}: {elide(str(exc), MAX_REASON)} (truncated or corrupt?)",
                            path=path) from None


def message_to_text(message: pb_message.Message) -> str:
    """Caffe-style text: fields in field-number order (as Caffe's printer), 2-space indent, shortest floats;
    a net's plugin parameters (:mod:`vggproto.caffe.plugins`) are written back into their layers."""
    extra = [plugins.plugin_text(layer) for layer in message.layer] \
        if isinstance(message, caffe_pb2.NetParameter) and plugins.registered() else []
    if not any(extra):
        return text_format.MessageToString(message, as_utf8=True)
    head = caffe_pb2.NetParameter()
    head.CopyFrom(message)
    head.ClearField("layer")
    parts = [text_format.MessageToString(head, as_utf8=True)]
    for layer, more in zip(message.layer, extra):
        parts.append("layer {\n" + text_format.MessageToString(layer, as_utf8=True, indent=2) + more + "}\n")
    return "".join(parts)


def write_message(message: pb_message.Message, path: str | os.PathLike, dialect: str = "bvlc") -> None:
    """Write a message as text or binary according to the file extension (atomically); binary in the field
    numbers of ``dialect``."""
    path = Path(path)
    if path.suffix.lower() in BINARY_SUFFIXES:
        data = dialects.from_superset(message.SerializeToString(), type(message), dialect)
    else:
        data = message_to_text(message).encode("utf-8")
    atomic_write_bytes(path, data)


# --------------------------------------------------------------------------------------------------------------
# Solvers and other messages
# --------------------------------------------------------------------------------------------------------------

def read_solver(source: PathOrText, resolve_prefix: bool = True,
                dialect: str | None = None) -> caffe_pb2.SolverParameter:
    """Read a solver (in ``dialect``, None: detected), upgrading ``solver_type``; with ``resolve_prefix`` apply
    Caffe's snapshot_prefix default (solver path minus extension, or ``<dir>/<solver stem>`` when the prefix is
    a directory)."""
    content, path = load_source(source)
    solver = caffe_pb2.SolverParameter()
    try:
        _parse_in_dialect(content, path, solver, dialect, "solver")
    except PrototxtError as exc:
        raise SolverError(str(exc)) from None
    from vggproto.caffe.upgrade import default_snapshot_prefix, upgrade_solver
    upgrade_solver(solver, path=path)
    if resolve_prefix and path is not None:
        default_snapshot_prefix(solver, path)
    return solver


def write_solver(solver: caffe_pb2.SolverParameter, path: str | os.PathLike) -> None:
    """Write a solver as text."""
    write_message(solver, path)


def read_message(source: PathOrText, message: pb_message.Message) -> pb_message.Message:
    """Read any message (BlobProto, SolverState, Datum...) from text or binary."""
    content, path = load_source(source)
    if sniff_binary(content, path):
        _parse_binary(content, message, path, type(message).__name__)
    else:
        parse_text(_decode(content, path), message, path)
    return message
