"""Prototxt/binary I/O: round trips, detection, and one clear line for every bad input."""
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import vggproto
from vggproto.caffe.proto import caffe_pb2
from vggproto.cli import main
from vggproto.errors import PrototxtError, VGGProtoError

GOLDEN = Path(__file__).parent / "data" / "golden" / "upgrade"


def test_text_binary_text_round_trip(tmp_path):
    net = vggproto.read_net(GOLDEN / "vgg16_v1.prototxt")
    vggproto.write_net(net, tmp_path / "n.caffemodel")
    vggproto.write_net(vggproto.read_net(tmp_path / "n.caffemodel"), tmp_path / "n.prototxt")
    again = vggproto.read_net(tmp_path / "n.prototxt")
    assert again == net
    assert (tmp_path / "n.prototxt").read_text() == vggproto.caffe.prototxt.message_to_text(net)


def test_binary_detected_without_extension(tmp_path):
    net = vggproto.read_net(GOLDEN / "v1_small.caffemodel")
    blob_file = tmp_path / "weights_without_suffix"
    blob_file.write_bytes((GOLDEN / "v1_small.caffemodel").read_bytes())
    assert vggproto.read_net(blob_file) == net
    text_file = tmp_path / "net_without_suffix"
    text_file.write_text((GOLDEN / "vgg16_v1.prototxt").read_text())
    assert vggproto.read_net(text_file).layer[0].type == "Input"


def test_text_accepts_caffe_syntax_variants():
    net = vggproto.read_net("""# comment
name: 'quoted'   # single quotes
layer { name: "d" type: "Input" top: "data" input_param { shape: { dim: 1 dim: 2 } } }
layer { name: "r" type: 'ReLU' bottom: "data" top: "data" include: { phase: TEST } }
""")
    assert net.name == "quoted" and net.layer[1].include[0].phase == caffe_pb2.TEST


def test_unknown_fields_in_binary_are_kept(tmp_path):
    layer = caffe_pb2.LayerParameter(name="pool", type="Pooling")
    raw = layer.SerializeToString() + bytes([0xC8, 0x3E, 0x01])  # field 1001, varint 1: a fork field
    net_bytes = b"\xa2\x06" + bytes([len(raw)]) + raw             # NetParameter.layer (100), length-delimited
    net = vggproto.read_net(net_bytes)
    assert net.layer[0].name == "pool"
    assert net.SerializeToString() == net_bytes  # preserved on re-serialisation


def test_solver_round_trip(tmp_path):
    solver = vggproto.read_solver('net: "n.prototxt"\nbase_lr: 0.01\nstepvalue: 10\nstepvalue: 20\n'
                                  'lr_policy: "multistep"\ntype: "Adam"\n')
    vggproto.write_solver(solver, tmp_path / "s.prototxt")
    assert vggproto.read_solver(tmp_path / "s.prototxt", resolve_prefix=False) == solver


def test_layer_lines_point_at_layer_blocks():
    from vggproto.caffe.prototxt import layer_lines
    text = 'name: "x"\nlayer {\n  name: "a"\n}\n# layer { name: "c" }\nlayers { name: "b" }\n'
    assert layer_lines(text) == [(2, "a"), (6, "b")]


def _cli_error(*args):
    result = CliRunner().invoke(main, list(args))
    assert result.exit_code == 1, result.output
    lines = [line for line in result.output.splitlines() if line.startswith("vggproto: error:")]
    assert len(lines) == 1 and "Traceback" not in result.output, result.output
    return lines[0]


def _write(tmp_path, name, content):
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return str(path)


BAD_NETS = [
    # (file name, content, expected fragments of the one-line error)
    ("unknown_field.prototxt", 'layer {\n  name: "c"\n  convolution_param { num_outptu: 3 }\n}\n',
     [":3:", "layer 'c'", "num_outptu", "did you mean num_output"]),
    ("unknown_enum.prototxt", 'layer { name: "p" type: "Pooling"\n pooling_param { pool: MAXX } }\n',
     [":2:", "MAXX", "supported: MAX, AVE, STOCHASTIC"]),
    ("unclosed.prototxt", 'layer { name: "a" type: "ReLU"\n', ["unclosed.prototxt:"]),
    ("stray_brace.prototxt", 'layer { name: "a" }\n}\n', [":2:"]),
    ("string_for_int.prototxt", 'layer { name: "c" convolution_param { num_output: "x" } }\n', [":1:", "'c'"]),
    ("negative_uint.prototxt", 'layer { name: "c" convolution_param { num_output: -1 } }\n', [":1:"]),
    ("too_big.prototxt", 'layer { name: "c" convolution_param { group: 99999999999 } }\n', [":1:"]),
    ("unterminated.prototxt", 'name: "abc\nlayer { }\n', [":1:"]),
    ("dup_field.prototxt", 'name: "a"\nname: "b"\n', [":2:"]),
    ("solver_as_net.prototxt", 'base_lr: 0.1\nnet: "x"\n', ["base_lr", "looks like a solver"]),
    ("both.prototxt", 'layer { name: "a" }\nlayers { name: "b" }\n', ["both 'layer'"]),
    ("input_dims.prototxt", 'input: "data"\ninput_dim: 1\ninput_dim: 3\n', ["input_dim"]),
    ("input_shapes.prototxt", 'input: "a"\ninput: "b"\ninput_shape { dim: 1 }\n', ["input_shape"]),
    ("v0_type.prototxt", 'layers { layer { name: "x" type: "frobnicate" } }\n', ["frobnicate", "known:"]),
    ("v0_pad.prototxt", 'layers { layer { name: "p" type: "padding" pad: 1 } bottom: "a" top: "b" }\n'
                        'layers { layer { name: "r" type: "relu" } bottom: "b" top: "c" }\n', ["padding", "'r'"]),
    ("image.jpg", b"\xff\xd8\xff\xe0\x00\x10JFIF\x00", ["JPEG image"]),
    ("image.png", b"\x89PNG\r\n\x1a\n\x00\x00", ["PNG image"]),
    ("weights.h5", b"\x89HDF\r\n\x1a\n" + b"\x00" * 16, ["HDF5"]),
    ("latin1.prototxt", 'name: "caf\xe9"\n'.encode("latin-1"), ["not UTF-8"]),
    ("truncated.caffemodel", None, ["not a valid binary", "truncated or corrupt"]),
    ("corrupt.caffemodel", b"\x0f\xff\xff\xff\xff\xff\xff", ["not a valid binary"]),
]


@pytest.mark.parametrize("name, content, fragments", BAD_NETS, ids=[case[0] for case in BAD_NETS])
def test_bad_net_gives_one_clear_line(tmp_path, name, content, fragments):
    if content is None:  # a real caffemodel cut in the middle of a blob
        content = (GOLDEN / "v1_small.caffemodel").read_bytes()[:1000]
    path = _write(tmp_path, name, content)
    line = _cli_error("upgrade", "--kind", "net", path, str(tmp_path / "out.prototxt"))
    assert name in line
    for fragment in fragments:
        assert fragment in line, line
    with pytest.raises(VGGProtoError):
        vggproto.read_net(path)


BAD_SOLVERS = [
    ("unknown_solver_field.prototxt", 'base_lr: 0.1\nlearning_rate: 3\n', ["learning_rate", ":2:"]),
    ("net_as_solver.prototxt", 'base_lr: 0.1\nlayer { name: "a" }\n', ["looks like a net"]),
    ("both_types.prototxt", 'type: "SGD"\nsolver_type: ADAM\n', ["cannot both"]),
    ("bad_mode.prototxt", 'solver_mode: TPU\n', ["TPU", "supported: CPU, GPU"]),
]


@pytest.mark.parametrize("name, content, fragments", BAD_SOLVERS, ids=[case[0] for case in BAD_SOLVERS])
def test_bad_solver_gives_one_clear_line(tmp_path, name, content, fragments):
    path = _write(tmp_path, name, content)
    line = _cli_error("upgrade", "--kind", "solver", path, str(tmp_path / "out.prototxt"))
    for fragment in fragments:
        assert fragment in line, line


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(PrototxtError, match="no such file"):
        vggproto.read_net(str(tmp_path / "absent.prototxt"))
    with pytest.raises(PrototxtError, match="directory"):
        vggproto.read_net(tmp_path)


def test_error_carries_location_fields():
    with pytest.raises(PrototxtError) as info:
        vggproto.read_net('layer {\n  name: "conv"\n  type: "Convolution"\n  bogus: 1\n}\n')
    err = info.value
    assert (err.line, err.col, err.layer) == (4, 3, "conv")


def test_write_is_atomic(tmp_path, monkeypatch):
    target = tmp_path / "net.prototxt"
    target.write_text("old")
    net = caffe_pb2.NetParameter(name="new")

    def boom(*args, **kwargs):
        raise OSError("disk full")
    monkeypatch.setattr("os.replace", boom)
    with pytest.raises(OSError):
        vggproto.write_net(net, target)
    assert target.read_text() == "old"


def test_blob_float_fields_are_float32_exact():
    blob = caffe_pb2.BlobProto()
    values = np.array([0.1, -3.5e-8, 1e30], dtype=np.float32)
    blob.data.extend(values.tolist())
    parsed = caffe_pb2.BlobProto.FromString(blob.SerializeToString())
    assert np.array_equal(np.array(parsed.data, dtype=np.float32), values)
