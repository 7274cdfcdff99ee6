"""Fork dialects: the superset schema, auto-detection, forcing, the wire renumbering, fork-readable files and
the plugin route for private forks.

The fork's own view of a file is rebuilt from the dialect table (:func:`fork_schema`) into a separate descriptor
pool, so "the fork reads it" is checked by protobuf itself, not by the renumbering code under test.
"""
from __future__ import annotations

import logging

import numpy as np
import pytest
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, text_format

from vggproto.caffe import dialects
from vggproto.caffe.dialects import DIALECTS, fork_schema, from_superset, to_superset
from vggproto.caffe.proto import caffe_pb2
from vggproto.caffe.prototxt import parse_net, read_net, write_net
from vggproto.caffe.wire import iter_fields
from vggproto.errors import PrototxtError

POOL_NET = """name: "p"
input: "data"
input_shape { dim: 1 dim: 1 dim: 5 dim: 5 }
layer {
  name: "pool"
  type: "Pooling"
  bottom: "data"
  top: "pool"
  pooling_param { pool: MAX kernel_size: 2 stride: 2 ceil_mode: false }
}
"""


def fork_classes(dialect: str) -> dict[str, type]:
    """Message classes of the fork's own schema, in a fresh pool."""
    pool = descriptor_pool.DescriptorPool()
    proto = fork_schema(dialect)
    pool.Add(proto)
    return {m.name: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"caffe.{m.name}"))
            for m in proto.message_type}


# ---------------------------------------------------------------------------------------------- ceil_mode / round_mode

def test_ceil_mode_text_selects_a_dialect_with_one_warning_naming_the_line(caplog):
    with caplog.at_level(logging.WARNING, logger="vggproto.caffe.dialects"):
        parsed = parse_net(POOL_NET.encode())
    assert parsed.dialect == "ceil"
    warnings = [r.getMessage() for r in caplog.records if r.name == "vggproto.caffe.dialects"]
    assert warnings == ["<text>:9: 'ceil_mode' is a field of BVLC PR #3057 forks (DenseNet-Caffe and others); "
                        "reading with that dialect (--dialect ceil)"]


def test_ceil_mode_and_round_mode_give_the_right_pooling_in_both_dialects():
    from vggproto.net import Net
    floor = Net(POOL_NET.encode())                                      # fork: ceil_mode false = floor
    ceil = Net(POOL_NET.replace("ceil_mode: false", "ceil_mode: true").encode())
    bvlc_floor = Net(POOL_NET.replace("ceil_mode: false", "round_mode: FLOOR").encode())
    bvlc_ceil = Net(POOL_NET.replace(" ceil_mode: false", "").encode())
    # Caffe: (5 - 2) / 2 = 1.5 -> floor 1 + 1 = 2, ceil 2 + 1 = 3
    assert floor.blob_shapes["pool"] == bvlc_floor.blob_shapes["pool"] == (1, 1, 2, 2)
    assert ceil.blob_shapes["pool"] == bvlc_ceil.blob_shapes["pool"] == (1, 1, 3, 3)
    assert floor.dialect == "ceil" and bvlc_floor.dialect == "bvlc"


def test_binary_ceil_mode_sits_at_the_forks_field_13_with_the_forks_meaning(tmp_path):
    net = read_net(POOL_NET.encode())
    write_net(net, tmp_path / "p.caffemodel")
    data = (tmp_path / "p.caffemodel").read_bytes()
    fork_net = fork_classes("opencv")["NetParameter"].FromString(data)
    assert fork_net.layer[1].pooling_param.ceil_mode is False            # the fork reads what was meant
    bvlc_net = caffe_pb2.NetParameter.FromString(data)                   # BVLC reads 0 at 13 as round_mode CEIL
    assert bvlc_net.layer[1].pooling_param.round_mode == caffe_pb2.PoolingParameter.CEIL
    assert not bvlc_net.layer[1].pooling_param.HasField("ceil_mode")
    # a binary file carries no field names: read it with the dialect of its prototxt
    again = parse_net(tmp_path / "p.caffemodel", dialect="ceil")
    assert again.net.layer[1].pooling_param.ceil_mode is False and again.dialect == "ceil"


def test_forcing_bvlc_refuses_a_fork_field_naming_the_fork_and_line():
    with pytest.raises(PrototxtError) as info:
        parse_net(POOL_NET.encode(), dialect="bvlc")
    message = str(info.value)
    assert message.startswith("<text>:9: unknown field 'ceil_mode' in caffe.PoolingParameter for dialect 'bvlc'")
    assert "--dialect ceil" in message and "--dialect opencv" in message


def test_unknown_dialect_and_mixed_forks_are_refused():
    with pytest.raises(PrototxtError, match="unknown dialect 'nope'; supported: bvlc, ceil, ssd"):
        parse_net(POOL_NET.encode(), dialect="nope")
    mixed = POOL_NET + 'layer { name: "i" type: "Interp" bottom: "pool" top: "i" interp_param { zoom_factor: 2 } }\n'
    with pytest.raises(PrototxtError, match=r"fields of different forks in one file: 'ceil_mode' \(ceil, opencv\); "
                                            r"'interp_param' \(pspnet, deeplab\)"):
        parse_net(mixed.encode())


def test_a_bvlc_net_stays_bvlc_without_a_warning(caplog):
    text = POOL_NET.replace(" ceil_mode: false", "")
    with caplog.at_level(logging.WARNING):
        assert parse_net(text.encode()).dialect == "bvlc"
    assert not [r for r in caplog.records if r.name == "vggproto.caffe.dialects"]


# ---------------------------------------------------------------------------------------------- every dialect's fields

def _sample(field, depth: int = 0):
    """A non-default value for a scalar field; None for message fields (filled recursively)."""
    t = field.type
    if t == field.TYPE_BOOL:
        return not field.default_value if field.has_default_value else True
    if t in (field.TYPE_FLOAT, field.TYPE_DOUBLE):
        return 0.25
    if t == field.TYPE_STRING:
        return "x"
    if t == field.TYPE_ENUM:
        return field.enum_type.values[-1].number
    if t == field.TYPE_MESSAGE:
        return None
    return 7


def _fill(message, names: set[str], forks: dict[str, set[str]], depth: int = 0) -> None:
    """Set ``names`` of ``message``; a message field gets the dialect's own fields of its type (else its first)."""
    for field in message.DESCRIPTOR.fields:
        if field.name not in names:
            continue
        value = _sample(field)
        repeated = not isinstance(getattr(message, field.name), (int, float, str, bytes, bool)) \
            and not hasattr(getattr(message, field.name), "ListFields")
        if value is None:
            if depth < 2:
                child = getattr(message, field.name).add() if repeated else getattr(message, field.name)
                child_names = forks.get(child.DESCRIPTOR.name) or {child.DESCRIPTOR.fields[0].name}
                _fill(child, child_names, forks, depth + 1)
        elif repeated:
            getattr(message, field.name).append(value)
        else:
            setattr(message, field.name, value)


def _plain(value):
    if hasattr(value, "ListFields"):
        return _as_dict(value)
    if isinstance(value, (int, float, str, bytes, bool)):
        return value
    return [_plain(v) for v in value]


def _as_dict(message) -> dict:
    """Field name -> value, recursively: compares messages of two schemas (different classes)."""
    return {f.name: _plain(v) for f, v in message.ListFields()}


@pytest.mark.parametrize("dialect", [d for d in DIALECTS if d != "bvlc"])
def test_each_forks_fields_round_trip_through_text_and_the_forks_own_binary(dialect):
    classes = fork_classes(dialect)
    by_message: dict[str, set[str]] = {}
    for f in DIALECTS[dialect].fields:
        by_message.setdefault(f.message, set()).add(f.name)
    for message_name, names in by_message.items():
        ours = getattr(caffe_pb2, message_name)()
        _fill(ours, names, by_message)
        # text: names are unambiguous
        assert text_format.Parse(text_format.MessageToString(ours), getattr(caffe_pb2, message_name)()) == ours
        # binary: what vggproto writes in this dialect is what the fork's schema reads, and back
        wire = from_superset(ours.SerializeToString(), type(ours), dialect)
        theirs = classes[message_name].FromString(wire)
        assert _as_dict(theirs) == _as_dict(ours), message_name
        back = getattr(caffe_pb2, message_name).FromString(to_superset(theirs.SerializeToString(), type(ours),
                                                                       dialect))
        assert back == ours, message_name


def test_nested_fields_are_renumbered_inside_layers(tmp_path):
    text = ('name: "n" input: "data" input_shape { dim: 1 dim: 3 dim: 4 dim: 4 }\n'
            'layer { name: "perm" type: "Permute" bottom: "data" top: "perm" permute_param { order: 0 order: 2 '
            'order: 3 order: 1 } }\n'
            'layer { name: "prop" type: "Dropout" bottom: "perm" top: "perm" dropout_param { scale_train: false } }\n'
            'layer { name: "px" type: "Pooling" bottom: "perm" top: "px" pooling_param { kernel_size: 1 '
            'ceil_mode: false } }\n')
    net = read_net(text.encode(), dialect="opencv")
    write_net(net, tmp_path / "n.caffemodel", dialect="opencv")
    data = (tmp_path / "n.caffemodel").read_bytes()
    layer_numbers = set()
    for raw in iter_fields(data, 0, len(data)):
        if raw.number == 100:
            layer_numbers |= {f.number for f in iter_fields(data, raw.data_start, raw.end)}
    assert 148 in layer_numbers and 202 not in layer_numbers     # OpenCV keeps permute_param at 148
    theirs = fork_classes("opencv")["NetParameter"].FromString(data)
    assert list(theirs.layer[1].permute_param.order) == [0, 2, 3, 1]
    assert theirs.layer[2].dropout_param.scale_train is False and theirs.layer[3].pooling_param.ceil_mode is False
    assert parse_net(tmp_path / "n.caffemodel", dialect="opencv").net == net


def test_a_fork_caffemodel_written_by_vggproto_is_read_by_the_fork_and_reread_identically(tmp_path):
    from vggproto.weights.caffemodel import read_weights, write_weights
    net = read_net(POOL_NET.replace("Pooling", "Convolution").replace(
        "pooling_param { pool: MAX kernel_size: 2 stride: 2 ceil_mode: false }",
        "convolution_param { num_output: 2 kernel_size: 1 }") + 'layer { name: "q" type: "Pooling" bottom: "pool" '
        'top: "q" pooling_param { kernel_size: 2 stride: 2 ceil_mode: false } }\n')
    rng = np.random.default_rng(0)
    weights = {"pool": [rng.standard_normal((2, 1, 1, 1)).astype(np.float32), np.ones(2, np.float32)]}
    write_weights(tmp_path / "w.caffemodel", weights, net)
    theirs = fork_classes("ceil")["NetParameter"].FromString((tmp_path / "w.caffemodel").read_bytes())
    assert theirs.layer[2].pooling_param.ceil_mode is False
    assert np.frombuffer(np.asarray(theirs.layer[1].blobs[0].data, np.float32).tobytes(), np.float32).tolist() == \
        weights["pool"][0].ravel().tolist()
    again = read_weights(tmp_path / "w.caffemodel")
    assert [a.tolist() for a in again["pool"]] == [a.tolist() for a in weights["pool"]]


def test_fork_schema_of_bvlc_has_no_fork_field():
    proto = fork_schema("bvlc")
    names = {m.name for m in proto.message_type}
    assert "PriorBoxParameter" not in names and "VGGAugmentationParameter" not in names
    pooling = next(m for m in proto.message_type if m.name == "PoolingParameter")
    assert [f.name for f in pooling.field if f.number == 13] == ["round_mode"]
    assert "ceil_mode" not in [f.name for f in pooling.field]


# ---------------------------------------------------------------------------------------------- plugin route

@pytest.fixture()
def my_fork():
    """A private fork's parameter message, as protoc would make it from the user's own .proto."""
    from vggproto.caffe import plugins
    proto = descriptor_pb2.FileDescriptorProto(name="my_fork.proto", package="mylab")
    message = proto.message_type.add(name="GainParameter")
    message.field.add(name="gain", number=1, type=descriptor_pb2.FieldDescriptorProto.TYPE_FLOAT,
                      label=descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL, default_value="1")
    pool = descriptor_pool.DescriptorPool()
    pool.Add(proto)
    gain_class = message_factory.GetMessageClass(pool.FindMessageTypeByName("mylab.GainParameter"))
    plugins.register_param("gain_param", 2001, gain_class, fork="my lab's caffe")
    yield gain_class
    plugins.unregister_param("gain_param")


GAIN_NET = """name: "g"
input: "data"
input_shape { dim: 1 dim: 2 }
layer {
  name: "g"
  type: "Gain"
  bottom: "data"
  top: "g"
  gain_param {
    gain: 3
  }
}
"""


def test_a_private_fork_layer_and_its_parameter_need_no_patch(my_fork, tmp_path):
    import torch

    from vggproto.layers import CaffeLayer, register
    from vggproto.layers.registry import _REGISTRY
    from vggproto.net import Net

    @register("Gain")
    class GainLayer(CaffeLayer):
        def __init__(self, spec):
            super().__init__(spec)
            self.gain = spec.plugin_param("gain_param").gain
            self.top_shapes = [spec.bottom_shapes[0]]

        def forward(self, x):
            return (x * self.gain,)
    try:
        net = Net(GAIN_NET.encode())
        out = net.forward(data=np.array([[1.0, -2.0]], np.float32))["g"]
        assert torch.equal(out, torch.tensor([[3.0, -6.0]]))
        write_net(read_net(GAIN_NET.encode()), tmp_path / "g.prototxt")
        assert "  gain_param {\n    gain: 3.0\n  }\n" in (tmp_path / "g.prototxt").read_text()
        write_net(read_net(GAIN_NET.encode()), tmp_path / "g.caffemodel")
        binary = Net(tmp_path / "g.caffemodel")
        assert binary.layer_dict["g"].gain == 3.0
    finally:
        _REGISTRY.pop("Gain", None)


def test_plugin_names_and_numbers_must_be_free(my_fork):
    from vggproto.caffe import plugins
    with pytest.raises(ValueError, match="LayerParameter already has pooling_param = 121"):
        plugins.register_param("x_param", 121, my_fork)


def test_every_dialect_field_is_in_the_superset_schema():
    for dialect in DIALECTS.values():
        for f in dialect.fields:
            assert caffe_pb2.DESCRIPTOR.message_types_by_name[f.message].fields_by_name[f.name].number == f.superset
    assert dialects.BVLC == "bvlc"


# ---------------------------------------------------------------------------------------------- upgrade --to-bvlc

FORK_NET = """name: "f"
input: "data"
input_shape { dim: 1 dim: 3 dim: 8 dim: 8 }
layer { name: "pool" type: "Pooling" bottom: "data" top: "pool"
  pooling_param { pool: MAX kernel_size: 3 stride: 2 ceil_mode: false } }
layer { name: "r6" type: "ReLU6" bottom: "pool" top: "r6" }
layer { name: "dw" type: "DepthwiseConvolution" bottom: "r6" top: "dw"
  convolution_param { num_output: 3 group: 3 kernel_size: 3 pad: 1 } }
layer { name: "drop" type: "Dropout" bottom: "dw" top: "dw" dropout_param { scale_train: false } }
layer { name: "perm" type: "Permute" bottom: "dw" top: "perm" permute_param { order: 0 order: 2 order: 3 order: 1 } }
"""


def test_upgrade_to_bvlc_rewrites_exact_equivalents_and_names_the_rest(tmp_path):
    from click.testing import CliRunner

    from vggproto.cli import main
    (tmp_path / "fork.prototxt").write_text(FORK_NET)
    result = CliRunner().invoke(main, ["upgrade", "--to-bvlc", str(tmp_path / "fork.prototxt"),
                                       str(tmp_path / "bvlc.prototxt")])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[1:] == [
        "  layer 'pool' (Pooling): ceil_mode: false -> round_mode: FLOOR",
        "  layer 'r6' (ReLU6): ReLU6 -> Clip { min: 0 max: 6 }",
        "  layer 'dw' (DepthwiseConvolution): DepthwiseConvolution -> Convolution (the same group and blobs)",
        "  no BVLC equivalent: layer 'drop' (Dropout): fork field(s) scale_train have no BVLC equivalent at these "
        "values",
        "  no BVLC equivalent: layer 'perm' (Permute): a fork layer type, no BVLC equivalent"]
    net = read_net(tmp_path / "bvlc.prototxt")
    layers = {layer.name: layer for layer in net.layer}
    assert layers["pool"].pooling_param.round_mode == caffe_pb2.PoolingParameter.FLOOR
    assert not layers["pool"].pooling_param.HasField("ceil_mode")
    assert layers["r6"].type == "Clip" and (layers["r6"].clip_param.min, layers["r6"].clip_param.max) == (0, 6)
    assert layers["dw"].type == "Convolution" and layers["dw"].convolution_param.group == 3


def test_the_rewritten_pooling_and_clip_compute_what_the_fork_computes(tmp_path):
    from vggproto.caffe.to_bvlc import to_bvlc
    from vggproto.net import Net
    text = FORK_NET.split('layer { name: "dw"')[0]
    fork = Net(text.encode())
    net = read_net(text.encode())
    to_bvlc(net)
    bvlc = Net(net)
    x = np.random.default_rng(0).standard_normal((1, 3, 8, 8)).astype(np.float32) * 8
    a, b = fork.forward(data=x)["r6"], bvlc.forward(data=x)["r6"]
    assert bvlc.dialect == "bvlc" and a.shape == b.shape == (1, 3, 3, 3)
    assert float((a - b).abs().max()) == 0.0


def test_dialect_flag_forces_a_dialect_in_every_command(tmp_path):
    from click.testing import CliRunner

    from vggproto.cli import main
    (tmp_path / "p.prototxt").write_text(POOL_NET)
    runner = CliRunner()
    forced = runner.invoke(main, ["info", "--dialect", "bvlc", str(tmp_path / "p.prototxt")])
    assert forced.exit_code == 1 and "for dialect 'bvlc'" in forced.output
    ok = runner.invoke(main, ["info", "--dialect", "opencv", str(tmp_path / "p.prototxt")])
    assert ok.exit_code == 0 and "1 1 2 2 (4)" in ok.stdout
    for command in (["draw", str(tmp_path / "p.prototxt"), str(tmp_path / "p.dot")],
                    ["time", "--iterations", "1", str(tmp_path / "p.prototxt")],
                    ["upgrade", str(tmp_path / "p.prototxt"), str(tmp_path / "q.prototxt")]):
        result = runner.invoke(main, [command[0], "--dialect", "bvlc", *command[1:]])
        assert result.exit_code == 1 and "for dialect 'bvlc'" in result.output, command


def test_upgrade_to_bvlc_leaves_plain_bvlc_layers_unmentioned():
    from vggproto.caffe.to_bvlc import to_bvlc
    net = read_net(b'name: "b" input: "data" input_shape { dim: 1 dim: 2 } '
                   b'layer { name: "d" type: "Dropout" bottom: "data" top: "data" '
                   b'dropout_param { dropout_ratio: 0.3 } }')
    assert to_bvlc(net) == ([], [])


# ---------------------------------------------------------------------------------------------- the table as data

def test_every_dialects_layer_types_are_registered_layers():
    from vggproto.layers.registry import supported_types
    registered = set(supported_types())
    missing = {d.name: sorted(set(d.layer_types) - registered) for d in DIALECTS.values()}
    assert {name: types for name, types in missing.items() if types} == {}
    # a type implemented later moves from schema_only to layer_types, so the table says what runs
    assert {t for d in DIALECTS.values() for t in d.schema_only} & registered == set()


def test_the_messages_bvlc_lacks_are_derived_and_reached_only_through_fork_fields():
    from vggproto.caffe.dialect_table import EXTRA_MESSAGES, OWN_FIELD, OWN_MESSAGE
    extra = set(EXTRA_MESSAGES)
    assert {OWN_MESSAGE, "PriorBoxParameter", "NormalizedBBox", "BNParameter", "ReLU6Parameter"} <= extra
    assert not extra & {"PoolingParameter", "LossParameter", "LayerParameter", "BatchNormParameter"}
    fork_fields = {(f.message, f.name) for d in DIALECTS.values() for f in d.fields}
    for message in caffe_pb2.DESCRIPTOR.message_types_by_name.values():
        if message.name in extra:
            continue
        for field in message.fields:   # a BVLC message holds a fork message only in a fork's (or our) field
            if field.message_type is not None and field.message_type.name in extra:
                assert (message.name, field.name) in fork_fields | {OWN_FIELD}, (message.name, field.name)


def test_a_table_entry_that_is_not_in_the_superset_schema_is_refused():
    from vggproto.caffe.dialect_table import Moved, fields
    with pytest.raises(RuntimeError, match="PoolingParameter.ceil_mode is not field 13"):
        fields("PoolingParameter", ceil_mode=13)
    assert fields("PoolingParameter", ceil_mode=Moved(13, 1013))[0].number == 13
