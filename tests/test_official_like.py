"""vggproto.weights.official_like and ``vggproto make-official-like``: the official VGG caffemodel layout
(caffe-format.md D), at reduced width."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from vggproto.caffe.proto import caffe_pb2
from vggproto.caffe.wire import part_size
from vggproto.cli import main
from vggproto.errors import WeightsError
from vggproto.weights.caffemodel import read_caffemodel, read_weights, upgrade_caffemodel
from vggproto.weights.fit import fit_blob
from vggproto.weights.official_like import net_parts, official_net, write_official_like

V1 = caffe_pb2.V1LayerParameter


def _run(out: Path, depth: int, seed: int = 0, v2: bool = False, width_divisor: int = 1) -> None:
    write_official_like(out, depth, seed=seed, v2=v2, width_divisor=width_divisor)


def _expected_names(depth: int) -> list[tuple[str, int]]:
    """The deploy order of the release, written out from the paper's configurations D and E."""
    out = []
    for block, count in enumerate((2, 2, 3, 3, 3) if depth == 16 else (2, 2, 4, 4, 4), start=1):
        for i in range(1, count + 1):
            out += [(f"conv{block}_{i}", V1.CONVOLUTION), (f"relu{block}_{i}", V1.RELU)]
        out.append((f"pool{block}", V1.POOLING))
    for i in (6, 7):
        out += [(f"fc{i}", V1.INNER_PRODUCT), (f"relu{i}", V1.RELU), (f"drop{i}", V1.DROPOUT)]
    return out + [("fc8", V1.INNER_PRODUCT), ("prob", V1.SOFTMAX)]


@pytest.mark.parametrize("depth, size", [(16, 553_432_081), (19, 574_671_192)])
def test_full_size_byte_count_equals_the_official_files(depth, size):
    net, shapes = official_net(depth)
    parts = net_parts(net, shapes, seed=0)     # sizes only: no weights are generated
    assert sum(part_size(p) for p in parts) == size
    assert sum(int(np.prod(d)) for blobs in shapes.values() for d in blobs) == \
        (138_357_544 if depth == 16 else 143_667_240)


@pytest.mark.parametrize("depth", [16, 19])
def test_reduced_width_file_has_the_official_layout(tmp_path, depth):
    path = tmp_path / "vgg.caffemodel"
    _run(path, depth, seed=3, width_divisor=16)
    net = caffe_pb2.NetParameter.FromString(path.read_bytes())   # protobuf as the independent reader
    assert net.name == f"VGG_ILSVRC_{depth}_layers"
    assert list(net.input) == ["data"] and not net.input_dim and not net.input_shape and not net.layer
    assert [(layer.name, layer.type) for layer in net.layers] == _expected_names(depth)
    by_name = {layer.name: layer for layer in net.layers}
    conv = by_name["conv1_1"]
    assert (list(conv.bottom), list(conv.top)) == (["data"], ["conv1_1"])
    assert conv.convolution_param == caffe_pb2.ConvolutionParameter(num_output=4, pad=[1], kernel_size=[3])
    assert by_name["pool1"].pooling_param == caffe_pb2.PoolingParameter(pool=0, kernel_size=2, stride=2)
    assert by_name["drop6"].dropout_param.dropout_ratio == 0.5
    assert list(by_name["relu6"].bottom) == list(by_name["relu6"].top) == ["fc6"]
    assert list(by_name["prob"].top) == ["prob"]
    for layer in net.layers:
        assert bool(layer.blobs) == (layer.type in (V1.CONVOLUTION, V1.INNER_PRODUCT))
        for blob in layer.blobs:
            assert not blob.HasField("shape") and not blob.diff and not blob.double_data
    fc6 = by_name["fc6"].blobs
    assert (fc6[0].num, fc6[0].channels, fc6[0].height, fc6[0].width) == (1, 1, 256, 32 * 7 * 7)
    assert (fc6[1].num, fc6[1].channels, fc6[1].height, fc6[1].width) == (1, 1, 1, 256)
    fc8 = by_name["fc8"].blobs[0]
    assert (fc8.height, fc8.width) == (1000, 256)
    weights = read_weights(path)
    assert fit_blob(weights["fc6"][0], (256, 1568)) is not None and fit_blob(weights["fc6"][1], (256,)) is not None
    assert 0.005 < float(weights["fc6"][0].std()) < 0.02       # seeded N(0, 0.01²) weights


def test_seed_is_deterministic_and_matters(tmp_path):
    for name, seed in (("a", 1), ("b", 1), ("c", 2)):
        _run(tmp_path / f"{name}.caffemodel", 16, seed=seed, width_divisor=32)
    a, b, c = (read_weights(tmp_path / f"{n}.caffemodel")["conv1_1"][0] for n in "abc")
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_v2_resave_reads_equal_to_v1(tmp_path):
    _run(tmp_path / "v1.caffemodel", 16, seed=5, width_divisor=16)
    _run(tmp_path / "v2.caffemodel", 16, seed=5, v2=True, width_divisor=16)
    raw = caffe_pb2.NetParameter.FromString((tmp_path / "v2.caffemodel").read_bytes())
    assert not raw.layers and not raw.input and raw.layer[0].type == "Convolution"
    v1_weights, v2_weights = read_weights(tmp_path / "v1.caffemodel"), read_weights(tmp_path / "v2.caffemodel")
    assert list(v1_weights) == list(v2_weights)
    for name, arrays in v1_weights.items():
        for a, b in zip(arrays, v2_weights[name], strict=True):
            assert a.shape == b.shape and np.array_equal(a.view(np.uint32), b.view(np.uint32))
    net1, _ = read_caffemodel(tmp_path / "v1.caffemodel")
    net2, _ = read_caffemodel(tmp_path / "v2.caffemodel")
    assert net1 == net2


def test_streamed_upgrade_of_v1_file_equals_the_v2_resave(tmp_path):
    _run(tmp_path / "v1.caffemodel", 19, seed=9, width_divisor=16)
    _run(tmp_path / "v2.caffemodel", 19, seed=9, v2=True, width_divisor=16)
    upgrade_caffemodel(tmp_path / "v1.caffemodel", tmp_path / "up.caffemodel")
    assert (tmp_path / "up.caffemodel").read_bytes() == (tmp_path / "v2.caffemodel").read_bytes()


def test_official_like_command(tmp_path):
    out = tmp_path / "vgg.caffemodel"
    result = CliRunner().invoke(main, ["make-official-like", "--depth", "16", str(out), "--width-divisor", "8",
                                       "--seed", "4"])
    assert result.exit_code == 0, result.output
    size = out.stat().st_size
    assert result.output.strip() == f"wrote {out}: {size} bytes (V1, VGG-16, width/8, seed 4)"
    assert size == write_official_like(tmp_path / "again.caffemodel", 16, seed=4, width_divisor=8)
    assert out.read_bytes() == (tmp_path / "again.caffemodel").read_bytes()
    jpeg = tmp_path / "photo.caffemodel"
    jpeg.write_bytes(b"\xff\xd8\xff\xe0" + b"\0" * 60)
    args = ["make-official-like", "--depth", "19", str(jpeg), "--width-divisor", "16", "--v2"]
    refused = CliRunner().invoke(main, args)
    assert refused.exit_code == 1 and "--force" in refused.output and len(refused.output.strip().splitlines()) == 1
    assert jpeg.read_bytes().startswith(b"\xff\xd8")
    forced = CliRunner().invoke(main, [*args, "--force"])
    assert forced.exit_code == 0 and "(V2, VGG-19, width/16, seed 0)" in forced.output
    assert caffe_pb2.NetParameter.FromString(jpeg.read_bytes()).layer[0].type == "Convolution"
    bad = CliRunner().invoke(main, ["make-official-like", "--depth", "16", str(tmp_path / "x.caffemodel"),
                                    "--width-divisor", "3"])
    assert bad.exit_code in (1, 2) and len(bad.output.strip().splitlines()) == 1 and "64" in bad.output
    assert not (tmp_path / "x.caffemodel").exists()


@pytest.mark.parametrize("depth, divisor", [(11, 1), (16, 0), (16, 3), (19, 128)])
def test_bad_depth_or_divisor_is_a_weights_error(tmp_path, depth, divisor):
    with pytest.raises(WeightsError):
        write_official_like(tmp_path / "x.caffemodel", depth, width_divisor=divisor)
    assert not (tmp_path / "x.caffemodel").exists()
