"""Caffe's upgrades, checked against files upgraded by real Caffe and against hand-built legacy nets."""
from pathlib import Path

import pytest
from google.protobuf import text_format

import vggproto
from vggproto.caffe.proto import caffe_pb2
from vggproto.errors import PrototxtError, SolverError

GOLDEN = Path(__file__).parent / "data" / "golden" / "upgrade"


@pytest.mark.parametrize("legacy, upgraded", [
    ("vgg16_v1.prototxt", "vgg16_v1_upgraded.prototxt"),
    ("v1_small_deploy.prototxt", "v1_small_deploy_upgraded.prototxt"),
    ("v1_small.caffemodel", "v1_small_upgraded.caffemodel"),
])
def test_matches_caffe_upgrade_tools(legacy, upgraded):
    ours = vggproto.read_net(GOLDEN / legacy)
    caffe = vggproto.read_net(GOLDEN / upgraded, upgrade=False)
    assert ours == caffe


def test_upgraded_caffemodel_keeps_legacy_dims():
    net = vggproto.read_net(GOLDEN / "v1_small.caffemodel")
    fc6 = next(layer for layer in net.layer if layer.name == "fc6")
    weight, bias = fc6.blobs
    assert not weight.HasField("shape") and (weight.num, weight.channels) == (1, 1)
    assert (bias.num, bias.channels, bias.height) == (1, 1, 1) and bias.width == len(bias.data)


def test_solver_type_enum_becomes_string():
    ours = vggproto.read_solver(GOLDEN / "solver_nesterov_v1.prototxt", resolve_prefix=False)
    caffe = vggproto.read_solver(GOLDEN / "solver_nesterov_v1_upgraded.prototxt", resolve_prefix=False)
    assert ours == caffe and ours.type == "Nesterov" and not ours.HasField("solver_type")


def test_solver_with_both_types_is_refused():
    with pytest.raises(SolverError, match="cannot both"):
        vggproto.read_solver('type: "Adam"\nsolver_type: NESTEROV\n')


def test_snapshot_prefix_defaults(tmp_path):
    solver_file = tmp_path / "my_solver.prototxt"
    solver_file.write_text('net: "x.prototxt"\n')
    assert vggproto.read_solver(solver_file).snapshot_prefix == str(tmp_path / "my_solver")
    (tmp_path / "snaps").mkdir()
    solver_file.write_text(f'net: "x.prototxt"\nsnapshot_prefix: "{tmp_path / "snaps"}"\n')
    assert vggproto.read_solver(solver_file).snapshot_prefix == str(tmp_path / "snaps" / "my_solver")


V0_NET = """
name: "V0Net"
input: "data"
input_dim: 1 input_dim: 3 input_dim: 8 input_dim: 8
layers { layer { name: "pad1" type: "padding" pad: 2 } bottom: "data" top: "pad1" }
layers { layer { name: "conv1" type: "conv" num_output: 4 kernelsize: 3 stride: 2 biasterm: false
                 weight_filler { type: "gaussian" std: 0.01 } blobs_lr: 1 weight_decay: 0 }
         bottom: "pad1" top: "conv1" }
layers { layer { name: "relu1" type: "relu" } bottom: "conv1" top: "conv1" }
layers { layer { name: "pool1" type: "pool" pool: AVE kernelsize: 2 stride: 2 } bottom: "conv1" top: "pool1" }
layers { layer { name: "norm1" type: "lrn" local_size: 3 alpha: 0.5 beta: 0.7 k: 2 } bottom: "pool1" top: "norm1" }
layers { layer { name: "fc" type: "innerproduct" num_output: 5 } bottom: "norm1" top: "fc" }
layers { layer { name: "drop" type: "dropout" dropout_ratio: 0.3 } bottom: "fc" top: "fc" }
layers { layer { name: "prob" type: "softmax" } bottom: "fc" top: "prob" }
"""


def test_v0_net_with_padding_layer():
    net = vggproto.read_net(V0_NET)
    assert [(layer.name, layer.type) for layer in net.layer] == [
        ("input", "Input"), ("conv1", "Convolution"), ("relu1", "ReLU"), ("pool1", "Pooling"), ("norm1", "LRN"),
        ("fc", "InnerProduct"), ("drop", "Dropout"), ("prob", "Softmax")]
    conv = net.layer[1]
    assert list(conv.bottom) == ["data"]  # the padding layer is folded away
    cp = conv.convolution_param
    assert (list(cp.pad), list(cp.kernel_size), list(cp.stride), cp.num_output, cp.bias_term) == \
        ([2], [3], [2], 4, False)
    assert cp.weight_filler.type == "gaussian" and cp.weight_filler.std == pytest.approx(0.01)
    assert (conv.param[0].lr_mult, conv.param[0].decay_mult) == (1, 0)
    pool = net.layer[3].pooling_param
    assert (pool.pool, pool.kernel_size, pool.stride) == (caffe_pb2.PoolingParameter.AVE, 2, 2)
    lrn = net.layer[4].lrn_param
    assert (lrn.local_size, lrn.alpha, lrn.beta, lrn.k) == (3, 0.5, pytest.approx(0.7), 2)
    assert net.layer[6].dropout_param.dropout_ratio == pytest.approx(0.3)
    assert list(net.layer[0].input_param.shape[0].dim) == [1, 3, 8, 8]


def test_v0_data_layer_transform_fields_move_to_transform_param():
    net = vggproto.read_net("""
layers { layer { name: "data" type: "data" source: "train_lmdb" batchsize: 32 cropsize: 227 mirror: true
                 meanfile: "mean.binaryproto" scale: 0.5 rand_skip: 7 } top: "data" top: "label" }
""")
    layer = net.layer[0]
    assert layer.type == "Data"
    assert (layer.data_param.source, layer.data_param.batch_size, layer.data_param.rand_skip) == \
        ("train_lmdb", 32, 7)
    for field in ("scale", "mean_file", "crop_size", "mirror"):
        assert not layer.data_param.HasField(field)
    tp = layer.transform_param
    assert (tp.crop_size, tp.mirror, tp.mean_file, tp.scale) == (227, True, "mean.binaryproto", 0.5)


def test_v1_data_transform_upgrade_and_params():
    net = vggproto.read_net("""
layers { name: "data" type: IMAGE_DATA top: "data" top: "label"
         image_data_param { source: "list.txt" batch_size: 4 crop_size: 10 mirror: true }
         include { phase: TRAIN } }
layers { name: "ip" type: INNER_PRODUCT bottom: "data" top: "ip" blobs_lr: 1 blobs_lr: 2
         weight_decay: 1 weight_decay: 0 param: "shared_w" inner_product_param { num_output: 3 } }
""")
    data, ip = net.layer
    assert data.type == "ImageData" and data.transform_param.crop_size == 10 and data.transform_param.mirror
    assert not data.image_data_param.HasField("crop_size") and data.include[0].phase == caffe_pb2.TRAIN
    assert [(p.name, p.lr_mult, p.decay_mult) for p in ip.param] == [("shared_w", 1, 1), ("", 2, 0)]


def test_input_shape_becomes_input_layer_in_front():
    net = vggproto.read_net("""
input: "a" input_shape { dim: 2 dim: 3 } input: "b" input_shape { dim: 2 }
layer { name: "sum" type: "Eltwise" bottom: "a" bottom: "a" top: "s" }
""")
    first = net.layer[0]
    assert (first.name, first.type, list(first.top)) == ("input", "Input", ["a", "b"])
    assert [list(s.dim) for s in first.input_param.shape] == [[2, 3], [2]]
    assert not net.input and not net.input_shape


def test_bare_input_names_are_stripped():
    net = vggproto.read_net('input: "data"\nlayer { name: "c" type: "ReLU" bottom: "data" top: "data" }\n')
    assert not net.input and [layer.name for layer in net.layer] == ["c"]


def test_batchnorm_with_three_params_gets_zero_lr():
    net = vggproto.read_net("""
layer { name: "bn" type: "BatchNorm" bottom: "x" top: "x"
        param { lr_mult: 1 } param { lr_mult: 1 decay_mult: 3 } param { lr_mult: 1 } }
layer { name: "bn2" type: "BatchNorm" bottom: "x" top: "x" param { lr_mult: 1 } }
""")
    assert [(p.lr_mult, p.decay_mult) for p in net.layer[0].param] == [(0, 0)] * 3
    assert net.layer[1].param[0].lr_mult == 1  # only the 3-param legacy form is fixed


def test_layer_and_layers_together_are_refused():
    with pytest.raises(PrototxtError, match="both 'layer'"):
        vggproto.read_net('layer { name: "a" type: "ReLU" }\nlayers { name: "b" type: RELU }\n')


def test_v1_enum_table_is_complete():
    from vggproto.caffe.upgrade import V1_TYPE_NAMES
    enum = caffe_pb2.V1LayerParameter.LayerType
    assert set(V1_TYPE_NAMES) == set(enum.values())
    assert V1_TYPE_NAMES[enum.Value("SOFTMAX_LOSS")] == "SoftmaxWithLoss"


def test_upgrade_cli_matches_caffe_bytes(tmp_path):
    from click.testing import CliRunner

    from vggproto.cli import main
    out = tmp_path / "s.prototxt"
    result = CliRunner().invoke(main, ["upgrade", str(GOLDEN / "solver_nesterov_v1.prototxt"), str(out)])
    assert result.exit_code == 0, result.output
    assert out.read_text() == (GOLDEN / "solver_nesterov_v1_upgraded.prototxt").read_text()
    binary = tmp_path / "m.caffemodel"
    result = CliRunner().invoke(main, ["upgrade", str(GOLDEN / "v1_small.caffemodel"), str(binary)])
    assert result.exit_code == 0, result.output
    assert vggproto.read_net(binary, upgrade=False) == vggproto.read_net(GOLDEN / "v1_small_upgraded.caffemodel")
    text = tmp_path / "vgg16.prototxt"
    CliRunner().invoke(main, ["upgrade", str(GOLDEN / "vgg16_v1.prototxt"), str(text)])
    parsed = text_format.Parse(text.read_text(), caffe_pb2.NetParameter())
    assert parsed == vggproto.read_net(GOLDEN / "vgg16_v1_upgraded.prototxt")
