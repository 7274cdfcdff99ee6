"""`vggproto draw`: Caffe draw_net conventions, shapes and parameter counts, phase/stage filtering, no-dot path."""
from __future__ import annotations

import logging
import re
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from vggproto.caffe.prototxt import read_net
from vggproto.cli import main
from vggproto.errors import VGGProtoError
from vggproto.net.shapes import interpreter_shapes
from vggproto.viz.draw import DrawOptions, build_graph, draw_net, layer_label, vgg_groups

ROOT = Path(__file__).resolve().parent.parent
SMALL_V1 = ROOT / "tests" / "data" / "golden" / "upgrade" / "v1_small_deploy.prototxt"
CONFIGS = ("A", "A-LRN", "B", "C", "D", "E")
needs_dot = pytest.mark.skipif(shutil.which("dot") is None, reason="graphviz 'dot' is not installed")

# Table 1 of the paper, written out by hand: (kernel, channels) per conv layer, 'M' = max-pool.
_BLOCKS = {
    "A": [[64], [128], [256, 256], [512, 512], [512, 512]],
    "B": [[64, 64], [128, 128], [256, 256], [512, 512], [512, 512]],
    "D": [[64, 64], [128, 128], [256] * 3, [512] * 3, [512] * 3],
    "E": [[64, 64], [128, 128], [256] * 4, [512] * 4, [512] * 4],
}


def table1_params(config: str) -> int:
    """Learnable parameters of a VGG config by hand: 3x3 convs (1x1 for C's third conv of blocks 3-5) + FCs."""
    blocks = _BLOCKS["D" if config == "C" else config.replace("-LRN", "")]
    total, c_in = 0, 3
    for b, block in enumerate(blocks):
        for i, c_out in enumerate(block):
            k = 1 if config == "C" and b >= 2 and i == 2 else 3
            total += k * k * c_in * c_out + c_out
            c_in = c_out
    return total + (512 * 7 * 7 * 4096 + 4096) + (4096 * 4096 + 4096) + (4096 * 1000 + 1000)


def test_table1_reference_counts_match_known_totals():
    # sanity of the hand formula: the paper's Table 2 (in millions) and the well-known VGG-16 total
    assert table1_params("D") == 138_357_544
    assert [round(table1_params(c) / 1e6) for c in ("A", "B", "C", "D", "E")] == [133, 133, 134, 138, 144]


@needs_dot
@pytest.mark.parametrize("config", CONFIGS)
def test_generated_deploy_svg_has_layers_shapes_and_total(config, tmp_path):
    prototxt = ROOT / "nets" / f"{config}_deploy.prototxt"
    if not prototxt.exists():
        pytest.skip(f"{prototxt} not generated")
    out = draw_net(str(prototxt), tmp_path / "net.svg")
    svg = Path(out).read_text()
    texts = re.findall(r"<text[^>]*>([^<]*)</text>", svg)
    for layer in read_net(str(prototxt)).layer:
        assert layer.name in texts, layer.name
    assert f"total parameters: {table1_params(config):,} " + \
        f"({table1_params(config) / 1e6:.1f}M)" in texts
    # blob shapes along the VGG pyramid: 224 -> 112 -> ... -> 7 after pool5, then the FC widths
    for shape in ("10x3x224x224", "10x64x224x224", "10x64x112x112", "10x512x7x7", "10x4096", "10x1000"):
        assert shape in texts, shape
    assert "params: 102,764,544" in texts  # fc6: 25088 * 4096 + 4096


def small_net_text() -> str:
    return SMALL_V1.read_text()


def test_small_v1_net_labels_colours_shapes_and_params():
    graph = build_graph(read_net(str(SMALL_V1)), DrawOptions(rankdir="LR"), str(SMALL_V1))
    source = graph.source
    # Caffe's node keys, styles and colours
    assert re.search(r'conv1_Convolution \[label="conv1\\n\(Convolution\)\\nkernel size: 3\\nstride: 1\\npad: 1'
                     r'\\nparams: 112" fillcolor="#FF5050" shape=record style=filled\]', source)
    assert re.search(r'pool1_Pooling \[label="pool1\\n\(Pooling MAX\)\\nkernel size: 2\\nstride: 2\\npad: 0"'
                     r' fillcolor="#FF9900"', source)
    assert 'fc6_InnerProduct [label="fc6\\n(InnerProduct)\\nparams: 726" fillcolor="#CC33FF"' in source
    assert 'relu1_ReLU [label="relu1\\n(ReLU)" fillcolor="#90EE90"' in source
    assert 'prob_Softmax [label="prob\\n(Softmax)" fillcolor="#6495ED"' in source
    assert 'data_blob [label="data\\n2x3x9x11" fillcolor="#E0E0E0" shape=octagon style=filled]' in source
    # shapes by hand: conv pad 1 keeps 9x11; MAX pool 2/2 rounds up (Caffe) to 5x6; fc6 6, fc8 3
    for blob, shape in (("conv1", "2x4x9x11"), ("pool1", "2x4x5x6"), ("fc6", "2x6"), ("fc8", "2x3"),
                        ("prob", "2x3")):
        assert f'{blob}_blob [label="{blob}\\n{shape}"' in source
    # edge labels: num_output for conv/IP; params 4*3*3*3+4, 6*4*5*6+6, 3*6+3
    assert "conv1_Convolution -> conv1_blob [label=4]" in source
    assert "fc8_InnerProduct -> fc8_blob [label=3]" in source
    assert "total parameters: 859" in source
    assert "subgraph cluster_block1" in source and "subgraph cluster_fc6" in source


def test_top_to_bottom_separator_and_lr_mult():
    net = read_net("""name: "t" layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 1 dim: 2
        dim: 5 dim: 5 } } } layer { name: "c" type: "Convolution" bottom: "x" top: "y" param { lr_mult: 1 }
        param { lr_mult: 2 } convolution_param { num_output: 3 kernel_size: 3 stride: 2 } }""")
    label = layer_label(net.layer[1], "TB", display_lrm=True, params="57")
    assert label == "c (Convolution) kernel size: 3 stride: 2 pad: 0 lr mult: 1.0, 2.0 params: 57"
    source = build_graph(net, DrawOptions(rankdir="TB", display_lrm=True)).source
    assert "y\\n1x3x2x2" in source and "params: 57" in source and "rankdir=TB" in source


PHASED = """name: "phased"
layer { name: "train_in" type: "Input" top: "data" include { phase: TRAIN }
        input_param { shape { dim: 8 dim: 3 dim: 4 dim: 4 } } }
layer { name: "test_in" type: "Input" top: "data" include { phase: TEST }
        input_param { shape { dim: 2 dim: 3 dim: 4 dim: 4 } } }
layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip" inner_product_param { num_output: 5 } }
layer { name: "staged" type: "ReLU" bottom: "ip" top: "ip" include { phase: TEST stage: "deploy" } }
layer { name: "leveled" type: "Dropout" bottom: "ip" top: "ip" include { min_level: 2 } }
layer { name: "not_deploy" type: "Sigmoid" bottom: "ip" top: "sig" exclude { stage: "deploy" } }
"""


def _node_keys(options: DrawOptions) -> set[str]:
    source = build_graph(read_net(PHASED), options).source
    return set(re.findall(r"^\s*(\w+)_(?:Input|InnerProduct|ReLU|Dropout|Sigmoid)\w* \[", source, re.M))


def test_phase_stage_and_level_filtering():
    assert _node_keys(DrawOptions(phase="TRAIN")) == {"train_in", "ip", "not_deploy"}
    assert _node_keys(DrawOptions(phase="TEST")) == {"test_in", "ip", "not_deploy"}
    assert _node_keys(DrawOptions(phase="TEST", stages=("deploy",))) == {"test_in", "ip", "staged"}
    assert _node_keys(DrawOptions(phase="TRAIN", stages=("deploy",))) == {"train_in", "ip"}
    assert _node_keys(DrawOptions(phase="TRAIN", level=2)) == {"train_in", "ip", "leveled", "not_deploy"}
    assert _node_keys(DrawOptions(phase="ALL")) == {"train_in", "test_in", "ip", "staged", "leveled",
                                                    "not_deploy"}


def test_all_phases_show_both_shapes_and_phase_tags():
    source = build_graph(read_net(PHASED), DrawOptions(phase="ALL")).source
    assert 'data_blob [label="data\\nTEST: 2x3x4x4\\nTRAIN: 8x3x4x4"' in source
    assert "(Input)\\n[TRAIN]" in source and "(Input)\\n[TEST]" in source
    assert "params: 245" in source  # 5 * 48 + 5, counted once although the layer is in both phases
    test_only = build_graph(read_net(PHASED), DrawOptions(phase="TEST")).source
    assert 'data_blob [label="data\\n2x3x4x4"' in test_only and "[TEST]" not in test_only


def test_unbuildable_net_draws_without_shapes(caplog):
    net = read_net('name: "p" layer { name: "py" type: "NoSuchLayerType" top: "x" } '
                   'layer { name: "r" type: "ReLU" bottom: "x" top: "x" }')
    with caplog.at_level(logging.WARNING, logger="vggproto"):
        source = build_graph(net).source
    assert "py_NoSuchLayerType" in source and 'x_blob [label=x ' in source and "total parameters" not in source
    assert "without blob shapes" in caplog.text


def test_no_shapes_option_skips_building():
    source = build_graph(read_net(str(SMALL_V1)), DrawOptions(shapes=False)).source
    assert "2x4x9x11" not in source and "params:" not in source and "conv1_Convolution" in source


def test_interpreter_shapes_match_hand_values():
    shapes = interpreter_shapes(read_net(str(SMALL_V1)), "TEST")
    assert shapes.blobs["pool1"] == (2, 4, 5, 6) and shapes.blobs["prob"] == (2, 3)
    assert shapes.params == {"input": 0, "conv1": 112, "relu1": 0, "pool1": 0, "fc6": 726, "relu6": 0,
                             "drop6": 0, "fc8": 21, "prob": 0}
    assert shapes.total == 859


def test_shared_parameters_counted_once():
    net = read_net("""name: "siamese"
        layer { name: "in" type: "Input" top: "a" top: "b" input_param { shape { dim: 2 dim: 4 } } }
        layer { name: "ip_a" type: "InnerProduct" bottom: "a" top: "fa" param { name: "w" } param { name: "bias" }
                inner_product_param { num_output: 3 } }
        layer { name: "ip_b" type: "InnerProduct" bottom: "b" top: "fb" param { name: "w" } param { name: "bias" }
                inner_product_param { num_output: 3 } }""")
    source = build_graph(net, DrawOptions(phase="TEST")).source
    assert "ip_a\\n(InnerProduct)\\nparams: 15\"" in source  # 3 * 4 + 3
    assert "ip_b\\n(InnerProduct)\\nparams: 15 (shared)" in source
    assert "total parameters: 15\"" in source


def test_vgg_groups():
    names = ["data", "conv1_1", "relu1_1", "pool1", "conv3_2", "norm1", "fc6", "relu6", "drop6", "fc8", "prob",
             "loss"]
    assert vgg_groups(names) == {"conv1_1": "block 1", "relu1_1": "block 1", "pool1": "block 1",
                                 "conv3_2": "block 3", "norm1": "block 1", "fc6": "fc6", "relu6": "fc6",
                                 "drop6": "fc6", "fc8": "fc8"}


def test_dot_output_and_missing_graphviz(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))  # no 'dot' anywhere
    out = draw_net(str(SMALL_V1), tmp_path / "net.dot")
    assert Path(out).read_text().startswith("digraph SmallV1 {")
    with pytest.raises(VGGProtoError, match="apt-get install graphviz"):
        draw_net(str(SMALL_V1), tmp_path / "net.svg")
    assert not (tmp_path / "net.svg").exists()
    result = CliRunner().invoke(main, ["draw", str(SMALL_V1), str(tmp_path / "net.png")])
    assert result.exit_code == 1 and "make graphviz" in result.output


def test_bad_extension_and_phase(tmp_path):
    with pytest.raises(VGGProtoError, match="supported: .svg"):
        draw_net(str(SMALL_V1), tmp_path / "net.jpg")
    with pytest.raises(VGGProtoError, match="unknown phase"):
        build_graph(read_net(str(SMALL_V1)), DrawOptions(phase="VAL"))


@needs_dot
def test_draw_command_png_and_options(tmp_path):
    out = tmp_path / "net.png"
    result = CliRunner().invoke(main, ["draw", str(SMALL_V1), str(out), "--rankdir", "TB", "--phase", "TEST",
                                       "--display-lrm"])
    assert result.exit_code == 0, result.output
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("config", CONFIGS)
def test_committed_docs_svg_is_current(config):
    """docs/<cfg>_deploy.svg (tools/make_docs_svgs.py) names every layer of nets/<cfg>_deploy and its total."""
    svg_path, prototxt = ROOT / "docs" / f"{config}_deploy.svg", ROOT / "nets" / f"{config}_deploy.prototxt"
    if not (svg_path.exists() and prototxt.exists()):
        pytest.skip("docs SVG or generated net missing")
    texts = " ".join(re.findall(r"<text[^>]*>([^<]*)</text>", svg_path.read_text()))
    names = re.findall(r"\b[A-Za-z][\w-]*(?= \((?!\d))", texts)  # TB labels read "name (Type) ..."
    assert sorted(names) == sorted(layer.name for layer in read_net(str(prototxt)).layer)
    assert f"total parameters: {table1_params(config):,}" in texts


def test_draw_command_stage_and_level_to_dot(tmp_path):
    net = tmp_path / "phased.prototxt"
    net.write_text(PHASED)
    out = tmp_path / "g.dot"
    result = CliRunner().invoke(main, ["draw", str(net), str(out), "--phase", "test", "--stage", "deploy",
                                       "--level", "2", "--rankdir", "BT"])
    assert result.exit_code == 0, result.output
    source = out.read_text()
    assert "staged_ReLU" in source and "leveled_Dropout" in source and "not_deploy" not in source
    assert "train_in" not in source and "rankdir=BT" in source and "data\\n2x3x4x4" in source


def test_display_lrm_follows_caffes_draw_net():
    """Caffe: python/caffe/draw.py — 'lr mult: a, b' (%.1f) on every Convolution/Deconvolution/InnerProduct,
    the defaults 1.0 included, hidden when both are 0, never on other layers."""
    net = read_net("""name: "t" layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 1 dim: 2
        dim: 5 dim: 5 } } }
        layer { name: "plain" type: "Convolution" bottom: "x" top: "a"
          convolution_param { num_output: 2 kernel_size: 1 } }
        layer { name: "one" type: "InnerProduct" bottom: "a" top: "b" param { lr_mult: 0.5 } inner_product_param {
          num_output: 2 } }
        layer { name: "frozen" type: "Deconvolution" bottom: "a" top: "c" param { lr_mult: 0 } param { lr_mult: 0 }
          convolution_param { num_output: 2 kernel_size: 1 } }
        layer { name: "relu" type: "ReLU" bottom: "a" top: "a" param { lr_mult: 3 } }""")
    labels = [layer_label(layer, "LR", display_lrm=True) for layer in net.layer]
    assert labels[1].endswith("\\nlr mult: 1.0, 1.0") and labels[2].endswith("\\nlr mult: 0.5, 1.0")
    assert "lr mult" not in labels[3] and "lr mult" not in labels[4]
    assert all("lr mult" not in layer_label(layer, "LR", display_lrm=False) for layer in net.layer)


def test_draw_accepts_caffes_display_lrm_spelling(tmp_path):
    result = CliRunner().invoke(main, ["draw", str(SMALL_V1), str(tmp_path / "n.dot"), "--display_lrm"])
    assert result.exit_code == 0, result.output
    assert "lr mult: " in (tmp_path / "n.dot").read_text()


def test_auto_direction_draws_deep_chains_top_to_bottom():
    deep = read_net(str(ROOT / "nets" / "D_deploy.prototxt"))
    assert "rankdir=TB" in build_graph(deep, DrawOptions(shapes=False)).source
    assert "rankdir=LR" in build_graph(read_net(str(SMALL_V1)), DrawOptions(shapes=False)).source
    assert "rankdir=LR" in build_graph(deep, DrawOptions(rankdir="LR", shapes=False)).source


_TRAIN_VAL = """name: "tv"
layer { name: "data" type: "Data" top: "data" top: "label" include { phase: TRAIN }
  transform_param { %s mean_value: 104 } data_param { source: "train_lmdb" backend: LMDB batch_size: 4 } }
layer { name: "data" type: "Data" top: "data" top: "label" include { phase: TEST }
  transform_param { %s mean_value: 104 } data_param { source: "val_lmdb" backend: LMDB batch_size: 2 } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  convolution_param { num_output: 4 kernel_size: 3 } }
layer { name: "fc" type: "InnerProduct" bottom: "conv1" top: "fc" inner_product_param { num_output: 3 } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "fc" bottom: "label" top: "loss" }
"""


@pytest.mark.parametrize("crop", ["crop_size: 8", ""])
def test_info_and_draw_of_a_train_val_net_read_no_data(tmp_path, monkeypatch, caplog, crop):
    import lmdb
    for name in ("train_lmdb", "val_lmdb"):   # real databases, so that nothing fails for want of one
        lmdb.open(str(tmp_path / name), map_size=1 << 20).close()

    def opened(*args, **kwargs):
        raise AssertionError(f"a shapes-only command opened a database: {args}")
    monkeypatch.setattr(lmdb, "open", opened)
    monkeypatch.chdir(tmp_path)
    Path("tv.prototxt").write_text(_TRAIN_VAL % (crop, crop))
    caplog.set_level(logging.INFO, logger="vggproto")
    info = CliRunner().invoke(main, ["info", "tv.prototxt"])
    assert info.exit_code == 0, info.output
    if crop:   # the shape is in the prototxt: the full table
        assert re.search(r"data +Data +data +2 3 8 8 \(384\)", info.output) and "fc" in info.output
    else:      # only the data would tell: unknown tops, and why
        assert re.search(r"data +Data +data +unknown \[1\]", info.output) and "fc" in info.output
        assert ("[1] data shape unknown: without transform_param.crop_size it is the first record's in "
                "'val_lmdb'") in info.output
    assert CliRunner().invoke(main, ["draw", "tv.prototxt", "tv.dot"]).exit_code == 0
    assert Path("tv.dot").is_file()
    assert not [m for m in caplog.messages if "output data size" in m or "Opened" in m]
