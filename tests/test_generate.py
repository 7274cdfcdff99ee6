"""The generator against Table 1 (hand-written here), torchvision's VGG, the official VGG-16/19 deploy files,
a BVLC-only schema, and the committed nets/ and solvers/ files."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
from click.testing import CliRunner
from google.protobuf import descriptor_pool, message_factory, text_format

from vggproto.caffe.proto import caffe_pb2
from vggproto.caffe.prototxt import read_net, read_solver
from vggproto.cli import main
from vggproto.errors import NetError, VGGProtoError
from vggproto.vgg.configs import DENSE_LAYER_NAMES, PAPER_INIT_LAYERS, TABLE1, parse_token
from vggproto.vgg.generate import build_net, build_solver, count_params, generate, generate_texts, infer_shapes

REPO = Path(__file__).resolve().parents[1]
GOLDEN = Path(__file__).parent / "data" / "golden" / "upgrade"
CONFIGS = ["A", "A-LRN", "B", "C", "D", "E"]

# Table 1 from the issue text: (kernel, width) per conv, one list per block; "LRN" after conv1_1 in A-LRN.
_C3 = [(3, 256), (3, 256), (1, 256)], [(3, 512), (3, 512), (1, 512)], [(3, 512), (3, 512), (1, 512)]
BLOCKS = {
    "A": [[(3, 64)], [(3, 128)], [(3, 256)] * 2, [(3, 512)] * 2, [(3, 512)] * 2],
    "B": [[(3, 64)] * 2, [(3, 128)] * 2, [(3, 256)] * 2, [(3, 512)] * 2, [(3, 512)] * 2],
    "C": [[(3, 64)] * 2, [(3, 128)] * 2, *_C3],
    "D": [[(3, 64)] * 2, [(3, 128)] * 2, [(3, 256)] * 3, [(3, 512)] * 3, [(3, 512)] * 3],
    "E": [[(3, 64)] * 2, [(3, 128)] * 2, [(3, 256)] * 4, [(3, 512)] * 4, [(3, 512)] * 4],
}
BLOCKS["A-LRN"] = BLOCKS["A"]
PARAMS = {"A": 132_863_336, "A-LRN": 132_863_336, "B": 133_047_848, "C": 133_638_952, "D": 138_357_544,
          "E": 143_667_240}


def expected_deploy_layers(config: str) -> list[tuple[str, str]]:
    """(name, type) of the deploy net, written from the issue's naming rules."""
    out = [("input", "Input")]
    for b, convs in enumerate(BLOCKS[config], start=1):
        for i, _ in enumerate(convs, start=1):
            out += [(f"conv{b}_{i}", "Convolution"), (f"relu{b}_{i}", "ReLU")]
            if config == "A-LRN" and (b, i) == (1, 1):
                out.append(("norm1", "LRN"))
        out.append((f"pool{b}", "Pooling"))
    for n in (6, 7):
        out += [(f"fc{n}", "InnerProduct"), (f"relu{n}", "ReLU"), (f"drop{n}", "Dropout")]
    return out + [("fc8", "InnerProduct"), ("prob", "Softmax")]


def conv_specs(net) -> list[tuple[int, int]]:
    return [(layer.convolution_param.kernel_size[0], layer.convolution_param.num_output)
            for layer in net.layer if layer.type == "Convolution"]


# ------------------------------------------------------------------------------------------------------------
# Table 1: layer sequence, parameter counts, shapes
# ------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("config", CONFIGS)
def test_deploy_layer_sequence_matches_table1(config):
    net = build_net(config, "deploy")
    assert [(layer.name, layer.type) for layer in net.layer] == expected_deploy_layers(config)
    assert conv_specs(net) == [spec for block in BLOCKS[config] for spec in block]
    for layer in net.layer:
        if layer.type == "Convolution":
            param = layer.convolution_param
            assert list(param.pad) == ([1] if param.kernel_size[0] == 3 else []) and not param.stride
        if layer.type == "ReLU":
            assert layer.bottom == layer.top
        if layer.type == "Pooling":
            assert (layer.pooling_param.pool, layer.pooling_param.kernel_size, layer.pooling_param.stride) == (
                caffe_pb2.PoolingParameter.MAX, 2, 2)
    assert [layer.inner_product_param.num_output for layer in net.layer if layer.type == "InnerProduct"] == [
        4096, 4096, 1000]


def test_table_literal_uses_paper_notation():
    tokens = {token for column in TABLE1.values() for token in column}
    assert tokens == {"conv3-64", "conv3-128", "conv3-256", "conv3-512", "conv1-256", "conv1-512", "LRN",
                      "maxpool", "FC-4096", "FC-1000", "soft-max"}
    assert parse_token("conv1-512").kernel == 1 and parse_token("FC-4096").width == 4096
    with pytest.raises(ValueError):
        parse_token("conv3x3-64")


@pytest.mark.parametrize("config", CONFIGS)
def test_exact_parameter_counts(config):
    for kind in ("deploy", "train_val", "dense"):
        assert count_params(build_net(config, kind)) == PARAMS[config], kind


@pytest.mark.parametrize("config,model", [("A", "vgg11"), ("B", "vgg13"), ("D", "vgg16"), ("E", "vgg19")])
def test_against_torchvision_vgg(config, model):
    torch = pytest.importorskip("torch")
    torchvision = pytest.importorskip("torchvision")
    with torch.device("meta"):
        reference = getattr(torchvision.models, model)()
    convs = [(m.kernel_size[0], m.out_channels) for m in reference.features if isinstance(m, torch.nn.Conv2d)]
    assert conv_specs(build_net(config, "deploy")) == convs
    assert count_params(build_net(config, "deploy")) == sum(p.numel() for p in reference.parameters())


@pytest.mark.parametrize("config", CONFIGS)
def test_output_shapes(config):
    shapes, _ = infer_shapes(build_net(config, "deploy"))
    assert shapes["data"] == (10, 3, 224, 224) and shapes["pool5"] == (10, 512, 7, 7)
    assert shapes["prob"] == (10, 1000)
    train, _ = infer_shapes(build_net(config, "train_val"), "TRAIN")
    assert train["data"] == (256, 3, 224, 224) and train["label"] == (256,) and train["fc8"] == (256, 1000)
    test, _ = infer_shapes(build_net(config, "train_val"), "TEST")
    assert test["data"] == (50, 3, 224, 224) and "accuracy_top5" in test


@pytest.mark.parametrize("config", CONFIGS)
@pytest.mark.parametrize("size,out", [(224, 1), (256, 2), (384, 6), (193, 1), (512, 10)])
def test_dense_net_output_size(config, size, out):
    shapes, counts = infer_shapes(build_net(config, "dense"), input_shape=(1, 3, size, size))
    assert shapes["fc8-conv"] == (1, 1000, out, out) and shapes["prob"] == (1, 1000, out, out)
    assert shapes["pool5"] == (1, 512, math.ceil(size / 32), math.ceil(size / 32))


def test_dense_net_layers_and_mapping():
    dense, deploy = build_net("D", "dense"), build_net("D", "deploy")
    _, dense_counts = infer_shapes(dense)
    _, deploy_counts = infer_shapes(deploy)
    assert DENSE_LAYER_NAMES == {"fc6": "fc6-conv", "fc7": "fc7-conv", "fc8": "fc8-conv"}
    for fc, conv in DENSE_LAYER_NAMES.items():
        assert dense_counts[conv] == deploy_counts[fc]
    kernels = {layer.name: (layer.convolution_param.kernel_size[0], list(layer.convolution_param.pad))
               for layer in dense.layer if layer.name in DENSE_LAYER_NAMES.values()}
    assert kernels == {"fc6-conv": (7, []), "fc7-conv": (1, []), "fc8-conv": (1, [])}
    assert not any(layer.type == "InnerProduct" for layer in dense.layer)
    with pytest.raises(NetError, match="too small"):
        infer_shapes(dense, input_shape=(1, 3, 192, 192))


def test_paper_init_layers_fit_every_deeper_config():
    a_shapes, a_counts = infer_shapes(build_net("A", "deploy"))
    a_layers = {layer.name: layer for layer in build_net("A", "deploy").layer}
    assert PAPER_INIT_LAYERS == ("conv1_1", "conv2_1", "conv3_1", "conv3_2", "fc6", "fc7", "fc8")
    for config in ("B", "C", "D", "E"):
        layers = {layer.name: layer for layer in build_net(config, "deploy").layer}
        shapes, counts = infer_shapes(build_net(config, "deploy"))
        for name in PAPER_INIT_LAYERS:
            assert counts[name] == a_counts[name], (config, name)
            assert shapes[name] == a_shapes[name], (config, name)
            assert layers[name].type == a_layers[name].type


# ------------------------------------------------------------------------------------------------------------
# The official release (deploy files of D and E)
# ------------------------------------------------------------------------------------------------------------

def official_v1_text(name: str, blocks: list[int]) -> str:
    """A V1 deploy file in the release's format (reference section D): bottom, top, name, type, params."""
    def layer(bottom, top, lname, ltype, body=""):
        return f"layers {{\n  bottom: \"{bottom}\"\n  top: \"{top}\"\n  name: \"{lname}\"\n  type: {ltype}\n{body}}}\n"
    out = [f'name: "{name}"\ninput: "data"\ninput_dim: 10\ninput_dim: 3\ninput_dim: 224\ninput_dim: 224\n']
    bottom = "data"
    for b, (count, width) in enumerate(zip(blocks, (64, 128, 256, 512, 512)), start=1):
        for i in range(1, count + 1):
            conv = f"conv{b}_{i}"
            params = f"    num_output: {width}\n    pad: 1\n    kernel_size: 3\n"
            out.append(layer(bottom, conv, conv, "CONVOLUTION", f"  convolution_param {{\n{params}  }}\n"))
            out.append(layer(conv, conv, f"relu{b}_{i}", "RELU"))
            bottom = conv
        out.append(layer(bottom, f"pool{b}", f"pool{b}", "POOLING",
                         "  pooling_param {\n    pool: MAX\n    kernel_size: 2\n    stride: 2\n  }\n"))
        bottom = f"pool{b}"
    for n, width in ((6, 4096), (7, 4096), (8, 1000)):
        out.append(layer(bottom, f"fc{n}", f"fc{n}", "INNER_PRODUCT",
                         f"  inner_product_param {{\n    num_output: {width}\n  }}\n"))
        bottom = f"fc{n}"
        if n < 8:
            out.append(layer(bottom, bottom, f"relu{n}", "RELU"))
            out.append(layer(bottom, bottom, f"drop{n}", "DROPOUT", "  dropout_param {\n    dropout_ratio: 0.5\n  }\n"))
    out.append(layer("fc8", "prob", "prob", "SOFTMAX"))
    return "".join(out)


def test_official_builder_reproduces_the_vgg16_golden():
    assert read_net(official_v1_text("VGG_ILSVRC_16_layers", [2, 2, 3, 3, 3])) == read_net(
        GOLDEN / "vgg16_v1_upgraded.prototxt")
    assert read_net(GOLDEN / "vgg16_v1.prototxt") == read_net(GOLDEN / "vgg16_v1_upgraded.prototxt")


@pytest.mark.parametrize("config,official", [
    ("D", lambda: read_net(GOLDEN / "vgg16_v1_upgraded.prototxt")),
    ("E", lambda: read_net(official_v1_text("VGG_ILSVRC_19_layers", [2, 2, 4, 4, 4]))),
])
def test_deploy_equals_official_release(config, official):
    ours, theirs = build_net(config, "deploy"), official()
    ours.ClearField("name")
    theirs.ClearField("name")
    assert ours == theirs
    committed = read_net(REPO / "nets" / f"{config}_deploy.prototxt")
    committed.ClearField("name")
    assert committed == theirs


# ------------------------------------------------------------------------------------------------------------
# BVLC-only schema for deploy/dense nets and solvers
# ------------------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def bvlc_classes():
    """caffe.proto with the vggproto extension (field 1000 and its message) and the forks' fields removed, in a
    fresh pool."""
    from vggproto.caffe.dialects import fork_schema
    proto = fork_schema("bvlc")
    assert "VGGAugmentationParameter" not in [m.name for m in proto.message_type]
    transform = next(m for m in proto.message_type if m.name == "TransformationParameter")
    assert max(f.number for f in transform.field) < 1000
    pool = descriptor_pool.DescriptorPool()
    pool.Add(proto)
    get = lambda name: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"caffe.{name}"))  # noqa: E731
    return get("NetParameter"), get("SolverParameter")


def max_field_number(message) -> int:
    best = 0
    for field, value in message.ListFields():
        best = max(best, field.number)
        if field.type == field.TYPE_MESSAGE:
            for item in (value if field.is_repeated else [value]):
                best = max(best, max_field_number(item))
    return best


def test_deploy_dense_and_solvers_are_bvlc_only(bvlc_classes):
    net_class, solver_class = bvlc_classes
    nets = sorted((REPO / "nets").glob("*_d*.prototxt"))
    solvers = sorted((REPO / "solvers").glob("*.prototxt"))
    assert len(nets) == 16 and len(solvers) == 14   # + D_loc_{scr,pcr} (Appendix A)
    for path in nets:
        text_format.Parse(path.read_text(), net_class())
        assert max_field_number(read_net(path)) < 1000, path
    for path in solvers:
        text_format.Parse(path.read_text(), solver_class())
        assert max_field_number(read_solver(path)) < 1000, path
    with pytest.raises(text_format.ParseError, match="vgg_augmentation_param"):  # the check can fail
        text_format.Parse((REPO / "nets" / "D_train_val.prototxt").read_text(), net_class())


def test_opencv_caffe_importer_reads_deploy_and_dense_nets():
    """OpenCV's own Caffe importer (its own caffe.proto) accepts the committed deploy/dense files."""
    cv2 = pytest.importorskip("cv2")
    for path in sorted((REPO / "nets").glob("*_d*.prototxt")):
        names = [layer.name for layer in read_net(path).layer if layer.type != "Input"]
        assert list(cv2.dnn.readNetFromCaffe(str(path)).getLayerNames()) == names, path


# ------------------------------------------------------------------------------------------------------------
# train_val nets
# ------------------------------------------------------------------------------------------------------------

def test_train_val_defaults():
    net = build_net("D", "train_val")
    train, test = net.layer[0], net.layer[1]
    assert [(l.name, l.type, l.include[0].phase) for l in (train, test)] == [
        ("data", "Data", caffe_pb2.TRAIN), ("data", "Data", caffe_pb2.TEST)]
    assert (train.data_param.batch_size, test.data_param.batch_size) == (256, 50)
    assert train.data_param.backend == caffe_pb2.DataParameter.LMDB
    for layer, mirror in ((train, True), (test, False)):
        tp = layer.transform_param
        assert tp.mirror is mirror and tp.crop_size == 224
        assert list(tp.mean_value) == pytest.approx([103.939, 116.779, 123.68])
    aug_train, aug_test = train.transform_param.vgg_augmentation_param, test.transform_param.vgg_augmentation_param
    assert (aug_train.scale_min, aug_train.scale_max, aug_test.test_scale) == (256, 256, 256)
    assert aug_train.color_shift_std == pytest.approx(0.1) and not aug_test.color_shift_std
    layers = {l.name: l for l in net.layer}
    assert layers["drop6"].dropout_param.dropout_ratio == 0.5 and layers["drop7"].bottom == ["fc7"]
    assert (layers["loss"].type, list(layers["loss"].bottom)) == ("SoftmaxWithLoss", ["fc8", "label"])
    assert layers["accuracy_top1"].accuracy_param.top_k == 1 and layers["accuracy_top5"].accuracy_param.top_k == 5
    assert all(layers[n].include[0].phase == caffe_pb2.TEST for n in ("accuracy_top1", "accuracy_top5"))
    for layer in net.layer:
        if layer.type in ("Convolution", "InnerProduct"):
            param = layer.convolution_param if layer.type == "Convolution" else layer.inner_product_param
            assert (param.weight_filler.type, param.weight_filler.std) == ("gaussian", pytest.approx(0.01))
            assert (param.bias_filler.type, param.bias_filler.value) == ("constant", 0)
    assert "prob" not in layers


def test_train_val_options():
    net = build_net("A-LRN", "train_val", data="imagedata", train_source="t.txt", val_source="v.txt",
                    mean_value=(1, 2, 3), crop_size=64, batch_size=8, test_batch_size=4, num_classes=10,
                    width_divisor=16, init="msra", scale="256-512")
    train, test = net.layer[0], net.layer[1]
    assert (train.type, train.image_data_param.source, train.image_data_param.shuffle) == ("ImageData", "t.txt", True)
    assert (test.image_data_param.source, test.image_data_param.batch_size) == ("v.txt", 4)
    aug = train.transform_param.vgg_augmentation_param
    assert (aug.scale_min, aug.scale_max, test.transform_param.vgg_augmentation_param.test_scale) == (256, 512, 384)
    assert list(train.transform_param.mean_value) == [1, 2, 3]
    widths = [l.convolution_param.num_output for l in net.layer if l.type == "Convolution"]
    assert widths == [4, 8, 16, 16, 32, 32, 32, 32]
    assert [l.inner_product_param.num_output for l in net.layer if l.type == "InnerProduct"] == [256, 256, 10]
    assert {l.convolution_param.weight_filler.type for l in net.layer if l.type == "Convolution"} == {"msra"}
    shapes, _ = infer_shapes(net, "TRAIN")
    assert shapes["pool5"] == (8, 32, 2, 2) and shapes["fc8"] == (8, 10)
    norm = next(l for l in net.layer if l.type == "LRN")
    assert (norm.name, norm.bottom[0], norm.lrn_param.local_size, norm.lrn_param.k) == ("norm1", "conv1_1", 5, 2)
    assert (norm.lrn_param.alpha, norm.lrn_param.beta) == (pytest.approx(0.0005), pytest.approx(0.75))
    hdf5 = build_net("A", "train_val", data="hdf5")
    assert hdf5.layer[0].type == "HDF5Data" and not hdf5.layer[0].HasField("transform_param")
    assert build_net("A", "train_val", scale="384").layer[1].transform_param.vgg_augmentation_param.test_scale == 384


@pytest.mark.parametrize("bad", [{"init": "uniform"}, {"data": "leveldb"}, {"scale": "512-256"}, {"batch_size": 0},
                                 {"width_divisor": 0}, {"colour": 1}])
def test_bad_options_raise(bad):
    with pytest.raises(VGGProtoError):
        build_net("D", "train_val", **bad)


# ------------------------------------------------------------------------------------------------------------
# Solvers
# ------------------------------------------------------------------------------------------------------------

def test_solver_recipe_and_chain():
    solver = read_solver(REPO / "solvers" / "D.prototxt", resolve_prefix=False)
    assert (solver.type, solver.base_lr, solver.momentum, solver.weight_decay) == (
        "SGD", pytest.approx(0.01), pytest.approx(0.9), pytest.approx(5e-4))
    assert (solver.max_iter, solver.lr_policy, solver.gamma, list(solver.test_iter)) == (
        370_000, "multistep", pytest.approx(0.1), [1000])
    assert len(solver.stepvalue) == 3 and list(solver.stepvalue) == sorted(solver.stepvalue)
    assert solver.stepvalue[-1] < solver.max_iter and solver.iter_size == 1 and not solver.weights
    assert solver.net == "nets/D_train_val.prototxt" and (REPO / solver.net).is_file()
    assert solver.snapshot > 0 and solver.snapshot_prefix and solver.random_seed >= 0 and solver.display > 0
    s384 = read_solver(REPO / "solvers" / "D_S384.prototxt", resolve_prefix=False)
    multi = read_solver(REPO / "solvers" / "D_S256-512.prototxt", resolve_prefix=False)
    assert s384.base_lr == pytest.approx(1e-3) and (REPO / s384.net).is_file() and (REPO / multi.net).is_file()
    assert list(s384.weights) == [f"{solver.snapshot_prefix}_iter_{solver.max_iter}.caffemodel"]
    assert list(multi.weights) == [f"{s384.snapshot_prefix}_iter_{s384.max_iter}.caffemodel"]
    aug = read_net(REPO / multi.net).layer[0].transform_param.vgg_augmentation_param
    assert (aug.scale_min, aug.scale_max) == (256, 512)
    assert read_net(REPO / s384.net).layer[0].transform_param.vgg_augmentation_param.scale_min == 384
    assert not (REPO / "solvers" / "A_S384.prototxt").exists()


def test_solver_iter_size_and_errors():
    assert build_solver("E", batch_size=64).iter_size == 4
    assert build_solver("E", test_batch_size=100).test_iter == [500]
    with pytest.raises(VGGProtoError, match="must divide"):
        build_solver("E", batch_size=100)
    with pytest.raises(VGGProtoError, match="unknown chain stage"):
        build_solver("E", stage="512")


# ------------------------------------------------------------------------------------------------------------
# Files: committed goldens, comments, CLI
# ------------------------------------------------------------------------------------------------------------

def test_committed_files_are_byte_equal(tmp_path):
    written = generate("all", tmp_path)
    for regression in ("scr", "pcr"):   # Appendix A localisation nets
        written += generate("D", tmp_path, task="localization", regression=regression)
    relative = sorted(str(p.relative_to(tmp_path)) for p in written)
    committed = sorted(str(p.relative_to(REPO)) for d in ("nets", "solvers") for p in (REPO / d).glob("*.prototxt"))
    assert relative == committed and len(relative) == 44
    for name in relative:
        assert (tmp_path / name).read_bytes() == (REPO / name).read_bytes(), name


@pytest.mark.parametrize("kind", ["train_val", "deploy", "dense"])
def test_commented_text_parses_back_to_the_message(kind):
    text = generate_texts("A-LRN")[f"nets/A-LRN_{kind}.prototxt"]
    assert text.startswith("# VGG configuration A-LRN") and "vggproto generate --config A-LRN" in text
    assert read_net(text) == build_net("A-LRN", kind)
    if kind != "dense":
        assert "Caffe divides alpha by local_size" in text


def test_cli_generate(tmp_path):
    result = CliRunner().invoke(main, ["generate", "--config", "B", "--out-dir", str(tmp_path), "--width-divisor",
                                       "8", "--mean-value", "1,2,3", "--batch-size", "32"])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (tmp_path / "nets").iterdir()) == [
        "B_dense.prototxt", "B_deploy.prototxt", "B_train_val.prototxt"]
    text = (tmp_path / "solvers" / "B.prototxt").read_text()
    assert "--batch-size 32 --mean-value 1,2,3 --width-divisor 8" in text and "iter_size: 8" in text
    net = read_net(tmp_path / "nets" / "B_train_val.prototxt")
    assert net == build_net("B", "train_val", width_divisor=8, mean_value=(1, 2, 3), batch_size=32)
    bad = CliRunner().invoke(main, ["generate", "--config", "B", "--out-dir", str(tmp_path), "--batch-size", "100"])
    assert bad.exit_code == 1 and "must divide" in bad.output


def test_small_net_runs_in_the_interpreter():
    """Width-divided deploy and dense nets build and run in the interpreter with the walker's shapes and counts."""
    net_module = pytest.importorskip("vggproto.net.interpreter")
    torch = pytest.importorskip("torch")
    for kind, size, out in (("deploy", 64, (1, 10)), ("dense", 96, (1, 10, 2, 2))):
        param = build_net("D", kind, width_divisor=16, crop_size=64, num_classes=10)
        param.layer[0].input_param.shape[0].dim[:] = [1, 3, size, size]
        shapes, counts = infer_shapes(param)
        net = net_module.Net(param, seed=0)
        assert {name: tuple(shape) for name, shape in net.blob_shapes.items()} == shapes
        assert sum(p.numel() for p in net.parameters()) == sum(counts.values())
        prob = net(data=torch.rand(1, 3, size, size))["prob"]
        assert tuple(prob.shape) == out == shapes["prob"]
        assert torch.allclose(prob.sum(dim=1), torch.ones(()), atol=1e-5)


def test_small_train_val_runs_end_to_end(tmp_path):
    """A width-divided train_val net with ImageData runs both phases in the interpreter; with std-0.01 weights
    the scores are ~0, so the initial loss is ln(num_classes)."""
    net_module = pytest.importorskip("vggproto.net.interpreter")
    images = sorted((Path(__file__).parent / "data" / "golden" / "data" / "images").glob("*.jpg"))[:4]
    if len(images) < 4:
        pytest.skip("golden data images not present")
    # width_divisor 8 keeps norm1's 8 channels >= local_size 5 (the interpreter's LRN rejects fewer for now)
    listing = tmp_path / "list.txt"
    listing.write_text("".join(f"{path} {i}\n" for i, path in enumerate(images)))
    param = build_net("A-LRN", "train_val", data="imagedata", train_source=str(listing), val_source=str(listing),
                      width_divisor=8, crop_size=32, batch_size=2, test_batch_size=2, num_classes=10,
                      scale="40-64")
    for phase, outputs in (("TRAIN", ["loss"]), ("TEST", ["accuracy_top1", "accuracy_top5", "loss"])):
        net = net_module.Net(param, phase=phase, seed=0)
        out = net()
        assert sorted(out) == outputs and tuple(net.blobs["data"].shape) == (2, 3, 32, 32)
        assert float(out["loss"].detach()) == pytest.approx(math.log(10), abs=1e-3)


def test_scale_none_gives_a_bvlc_only_train_net():
    """`--scale none` (images already at the input size, as in `make demo`): plain Caffe transform, no extension."""
    from vggproto.vgg.generate import build_net
    net = build_net("A", "train_val", scale="none", crop_size=32, width_divisor=8, num_classes=10,
                    input_scale=0.0125)
    data_layers = [layer for layer in net.layer if layer.type == "Data"]
    assert len(data_layers) == 2
    for layer in data_layers:
        assert not layer.transform_param.HasField("vgg_augmentation_param")
        assert layer.transform_param.crop_size == 32
        assert layer.transform_param.scale == pytest.approx(0.0125)


@pytest.mark.parametrize("classes, accuracies", [(3, ["accuracy_top1"]), (5, ["accuracy_top1"]),
                                                  (6, ["accuracy_top1", "accuracy_top5"])])
def test_top5_accuracy_only_with_more_than_five_classes(classes, accuracies):
    """Caffe's accuracy layer refuses top_k above the class count (and top-5 of 5 is always right), so a small
    --num-classes net must still load (tests/test_localize_train.py trains a 3-class one)."""
    from vggproto.vgg.generate import build_net
    param = build_net("A", "train_val", scale="none", crop_size=32, width_divisor=16, num_classes=classes,
                      data="hdf5")
    assert [layer.name for layer in param.layer if layer.type == "Accuracy"] == accuracies


def test_run_length_flags_shorten_the_solver_without_editing_it(tmp_path):
    """--max-iter/--test-iter/--test-interval/--snapshot: a small run from the generator itself; the lr steps
    keep their place in the paper's schedule (370k/74 epochs scaled)."""
    from click.testing import CliRunner

    from vggproto.caffe.prototxt import read_solver
    from vggproto.cli import main
    result = CliRunner().invoke(main, ["generate", "--config", "A", "--out-dir", str(tmp_path), "--width-divisor", "8",
                                       "--num-classes", "10", "--crop-size", "32", "--max-iter", "1000",
                                       "--test-iter", "10", "--test-interval", "100", "--snapshot", "500"])
    assert result.exit_code == 0, result.output
    solver = read_solver(tmp_path / "solvers" / "A.prototxt", resolve_prefix=False)
    paper = build_solver("A")
    assert (solver.max_iter, list(solver.test_iter), solver.test_interval, solver.snapshot) == (1000, [10], 100, 500)
    assert list(solver.stepvalue) == [round(v * 1000 / paper.max_iter) for v in paper.stepvalue]
    bad = CliRunner().invoke(main, ["generate", "--config", "A", "--out-dir", str(tmp_path), "--max-iter", "-1"])
    assert bad.exit_code == 1 and "--max-iter must be >= 0" in bad.output
