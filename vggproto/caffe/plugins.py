"""Parameters of layers from a private fork, without patching vggproto: the plugin route.

A user whose fork adds ``optional MyParameter my_param = 2001;`` to ``LayerParameter`` registers the field with
the message class protoc made of *their* ``.proto`` (any package name) and a layer class for the type::

    from vggproto.caffe.plugins import register_param
    from vggproto.layers import register, CaffeLayer

    register_param("my_param", 2001, my_pb2.MyParameter, fork="my lab's caffe")

    @register("MyLayer")
    class MyLayer(CaffeLayer):
        def __init__(self, spec):
            super().__init__(spec)
            p = spec.plugin_param("my_param")     # a my_pb2.MyParameter (defaults if the layer sets none)
            ...

vggproto's schema does not know the field, so it travels as what protobuf calls an unknown field: in a binary
file it is field 2001 of the layer, kept byte for byte on reading and writing; in a prototxt the ``my_param { }``
block of a layer is cut out before parsing (blank lines keep every line number), parsed with the user's class and
stored on the layer as that same unknown field; writing a net as text puts the block back.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from google.protobuf import message as pb_message
from google.protobuf import text_format

from vggproto.caffe.proto import caffe_pb2
from vggproto.caffe.wire import LENGTH, encode_tag, encode_varint, iter_fields
from vggproto.errors import PrototxtError


@dataclass(frozen=True)
class PluginParam:
    """A ``LayerParameter`` field of a private fork: its name, wire number and message class."""

    name: str
    number: int
    message_class: type[pb_message.Message]
    fork: str


_PLUGINS: dict[str, PluginParam] = {}


def register_param(name: str, number: int, message_class: type[pb_message.Message], fork: str = "a private fork",
                   ) -> PluginParam:
    """Make ``name { ... }`` (text) / field ``number`` (binary) of a layer a parameter of ``message_class``."""
    known = caffe_pb2.LayerParameter.DESCRIPTOR
    if name in known.fields_by_name or number in known.fields_by_number:
        field = known.fields_by_name.get(name) or known.fields_by_number[number]
        raise ValueError(f"plugin parameter {name} = {number}: LayerParameter already has {field.name} = "
                         f"{field.number}; pick a free name and number")
    plugin = PluginParam(name, number, message_class, fork)
    _PLUGINS[name] = plugin
    return plugin


def unregister_param(name: str) -> None:
    """Forget a plugin parameter (tests; a long-running process that reloads a plugin)."""
    _PLUGINS.pop(name, None)


def registered() -> dict[str, PluginParam]:
    """The plugin parameters registered so far, by field name."""
    return dict(_PLUGINS)


def plugin_param(layer: caffe_pb2.LayerParameter, name: str) -> pb_message.Message:
    """The plugin parameter ``name`` of ``layer`` (a default instance when the layer sets none)."""
    plugin = _PLUGINS.get(name)
    if plugin is None:
        raise PrototxtError(f"no plugin parameter '{name}' is registered (vggproto.caffe.plugins.register_param)")
    value = plugin.message_class()
    data = layer.SerializeToString()
    for raw in iter_fields(data, 0, len(data)):
        if raw.number == plugin.number and raw.wire_type == LENGTH:
            value.MergeFromString(data[raw.data_start:raw.end])
    return value


def _set_plugin(layer: caffe_pb2.LayerParameter, plugin: PluginParam, value: pb_message.Message) -> None:
    payload = value.SerializeToString()
    layer.MergeFromString(encode_tag(plugin.number, LENGTH) + encode_varint(len(payload)) + payload)


# ----------------------------------------------------------------------------------------------------------------
# Text: cut plugin blocks out before parsing, put them back when writing
# ----------------------------------------------------------------------------------------------------------------

_TOKEN = re.compile(r'#[^\n]*|"(?:[^"\\\n]|\\.)*"|\'(?:[^\'\\\n]|\\.)*\'|[{}]|\b(layers?|\w+)\b\s*:?\s*(?=\{)')


def extract_blocks(text: str) -> tuple[str, list[tuple[int, str, str]]]:
    """``text`` with every registered plugin block of a top-level layer blanked out (newlines kept), and the
    blocks as ``(layer index, field name, block body)``."""
    if not _PLUGINS:
        return text, []
    blocks, out, depth, layer, cut_from, cut_name = [], [], 0, -1, None, ""
    last = 0
    for match in _TOKEN.finditer(text):
        tok, name = match.group(0), match.group(1)
        if tok.startswith(("#", '"', "'")):
            continue
        if tok == "{":
            depth += 1
        elif tok == "}":
            depth -= 1
            if cut_from is not None and depth == 1:
                body = text[text.index("{", cut_from) + 1:match.start()]
                blocks.append((layer, cut_name, body))
                out.append(text[last:cut_from] + re.sub(r"[^\n]", " ", text[cut_from:match.end()]))
                last, cut_from = match.end(), None
        elif name in ("layer", "layers") and depth == 0:
            layer += 1
        elif name in _PLUGINS and depth == 1 and cut_from is None:
            cut_from, cut_name = match.start(), name
    out.append(text[last:])
    return "".join(out), blocks


def attach_blocks(net: caffe_pb2.NetParameter, blocks: list[tuple[int, str, str]], path: str | None) -> None:
    """Parse each cut block with its plugin's class and store it on its layer (as the unknown field)."""
    for index, name, body in blocks:
        plugin = _PLUGINS[name]
        value = plugin.message_class()
        try:
            text_format.Parse(body, value)
        except text_format.ParseError as exc:
            raise PrototxtError(f"{name} ({plugin.fork}): {exc}", path=path) from None
        _set_plugin(net.layer[index] if index < len(net.layer) else net.layers[index], plugin, value)


def plugin_text(layer: caffe_pb2.LayerParameter, indent: str = "  ") -> str:
    """The text of every registered plugin parameter ``layer`` carries, as ``name { ... }`` blocks."""
    parts = []
    data = layer.SerializeToString()
    numbers = {p.number: p for p in _PLUGINS.values()}
    for raw in iter_fields(data, 0, len(data)):
        plugin = numbers.get(raw.number)
        if plugin is not None and raw.wire_type == LENGTH:
            value = plugin.message_class.FromString(data[raw.data_start:raw.end])
            inner = text_format.MessageToString(value, as_utf8=True, indent=len(indent) + 2)
            parts.append(f"{indent}{plugin.name} {{\n{inner}{indent}}}\n")
    return "".join(parts)
