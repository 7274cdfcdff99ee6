"""vggproto convert: lossless round trips, state-dict naming, safetensors interop, fc<->conv, validation, CLI."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner

from vggproto.cli import main
from vggproto.convert.convert import convert, load_caffe_weights, summary
from vggproto.errors import WeightsError
from vggproto.net.dense import conv_to_fc, fc_to_conv
from vggproto.weights.caffemodel import read_weights
from vggproto.weights.fit import fit_to_net
from vggproto.weights.official_like import write_official_like
from vggproto.weights.torch_files import (
    input_format,
    load_safetensors,
    save_safetensors,
    state_dict_to_weights,
    weights_to_state_dict,
)

ROOT = Path(__file__).resolve().parent.parent


def _official_like(path: Path, v2: bool = False) -> Path:
    write_official_like(path, 16, seed=3, v2=v2, width_divisor=16)
    return path


@pytest.fixture(scope="module")
def official(tmp_path_factory) -> Path:
    """A V1 caffemodel laid out like the release (legacy dims, bare input name), widths / 16."""
    return _official_like(tmp_path_factory.mktemp("official") / "vgg16_small.caffemodel")


def _same(a: dict, b: dict) -> bool:
    """Bit-for-bit equality of two weight dicts: names, order, blob count, shapes, dtypes and bytes."""
    return list(a) == list(b) and all(
        len(a[k]) == len(b[k]) and all(x.shape == y.shape and x.dtype == y.dtype and x.tobytes() == y.tobytes()
                                       for x, y in zip(a[k], b[k])) for k in a)


def test_official_layout_normalised_to_caffe_net_shapes(official):
    raw = read_weights(official)
    assert raw["fc6"][0].shape == (1, 1, 256, 1568) and raw["conv1_1"][1].shape == (1, 1, 1, 4)
    weights, net, fmt = load_caffe_weights(official)
    assert fmt == "caffemodel" and net is not None
    assert weights["fc6"][0].shape == (256, 1568) and weights["fc6"][1].shape == (256,)
    assert weights["conv1_1"][0].shape == (4, 3, 3, 3) and weights["conv1_1"][1].shape == (4,)
    for layer in raw:  # values untouched
        for x, y in zip(raw[layer], weights[layer]):
            assert x.tobytes() == y.tobytes()
    kept, _, _ = load_caffe_weights(official, keep_shapes=True)
    assert _same(kept, raw)


@pytest.mark.parametrize("keep_shapes", [False, True])
def test_round_trip_chain_is_bit_exact(official, tmp_path, keep_shapes):
    first, _, _ = load_caffe_weights(official, keep_shapes=keep_shapes)
    chain = ["a.h5", "b.pt", "c.safetensors", "d.caffemodel", "e.pt", "f.caffemodel", "g.h5", "h.safetensors"]
    src = official
    for name in chain:
        result = convert(src, tmp_path / name, keep_shapes=keep_shapes)
        assert _same(result.weights, first), name
        again, _, _ = load_caffe_weights(tmp_path / name, keep_shapes=keep_shapes)
        assert _same(again, first), name
        src = tmp_path / name


def test_v2_resave_converts_to_the_same_weights(official, tmp_path):
    v2 = _official_like(tmp_path / "v2.caffemodel", v2=True)
    assert _same(convert(v2, tmp_path / "v2.pt").weights, convert(official, tmp_path / "v1.pt").weights)


def test_caffemodel_output_keeps_the_layer_structure(official, tmp_path):
    from vggproto.weights.caffemodel import read_caffemodel
    convert(official, tmp_path / "out.caffemodel")
    net, weights = read_caffemodel(tmp_path / "out.caffemodel")
    types = {layer.name: layer.type for layer in net.layer}
    assert types["conv1_1"] == "Convolution" and types["pool5"] == "Pooling" and types["prob"] == "Softmax"
    assert types["fc6"] == "InnerProduct" and weights["fc6"][0].shape == (256, 1568)


def test_pt_is_a_plain_state_dict_loadable_weights_only(official, tmp_path):
    convert(official, tmp_path / "w.pt")
    state = torch.load(tmp_path / "w.pt", weights_only=True)
    raw = read_weights(official)
    assert list(state)[:4] == ["conv1_1.weight", "conv1_1.bias", "conv1_2.weight", "conv1_2.bias"]
    assert len(state) == 32 and all(t.dtype == torch.float32 for t in state.values())
    assert np.array_equal(state["fc6.weight"].numpy(), raw["fc6"][0].reshape(256, 1568))
    assert input_format(tmp_path / "w.pt") == "pt"


def test_safetensors_interoperate_with_the_safetensors_package(official, tmp_path):
    safetensors_numpy = pytest.importorskip("safetensors.numpy")
    result = convert(official, tmp_path / "w.safetensors")
    theirs = safetensors_numpy.load_file(str(tmp_path / "w.safetensors"))
    ours = weights_to_state_dict(result.weights)
    assert set(theirs) == set(ours) and all(np.array_equal(theirs[k], ours[k]) for k in ours)
    safetensors_numpy.save_file({k: np.ascontiguousarray(v) for k, v in ours.items()}, str(tmp_path / "t.safetensors"))
    back = load_safetensors(tmp_path / "t.safetensors")
    assert set(back) == set(ours) and all(np.array_equal(back[k], ours[k]) for k in ours)
    assert input_format(tmp_path / "t.safetensors") == "safetensors"


def test_state_dict_keys_name_blobs_by_position(tmp_path):
    rng = np.random.default_rng(0)
    weights = {"bn1": [rng.standard_normal(3, dtype=np.float32) for _ in range(3)],
               "conv.a": [rng.standard_normal((2, 3, 1, 1), dtype=np.float32)]}
    state = weights_to_state_dict(weights)
    assert list(state) == ["bn1.weight", "bn1.bias", "bn1.2", "conv.a.weight"]
    assert _same(state_dict_to_weights(state), weights)
    save_safetensors(tmp_path / "x.safetensors", state)
    convert(tmp_path / "x.safetensors", tmp_path / "x.caffemodel")
    assert _same(read_weights(tmp_path / "x.caffemodel"), weights)


@pytest.mark.parametrize("keys, message", [
    (["a.weight", "a.2"], "blob indices must run 0..n-1"),
    (["a.weight", "b"], "is not <layer>.weight"),
])
def test_bad_state_dict_keys_are_refused(keys, message):
    with pytest.raises(WeightsError, match=message):
        state_dict_to_weights({k: np.zeros(1, np.float32) for k in keys})


def test_fc_to_conv_gives_the_same_function_and_reverses_bit_exactly(official):
    weights, _, _ = load_caffe_weights(official)
    dense = fc_to_conv(weights)
    assert "fc6" not in dense and dense["fc6-conv"][0].shape == (256, 32, 7, 7)
    assert dense["fc7-conv"][0].shape == (256, 256, 1, 1) and dense["fc8-conv"][0].shape == (1000, 256, 1, 1)
    pool5 = torch.randn(2, 32, 7, 7, dtype=torch.float64)
    w6, b6 = (torch.from_numpy(a).double() for a in weights["fc6"])
    as_fc = pool5.flatten(1) @ w6.T + b6  # Caffe InnerProduct on the C-order flatten of pool5
    as_conv = F.conv2d(pool5, torch.from_numpy(dense["fc6-conv"][0]).double(),
                       torch.from_numpy(dense["fc6-conv"][1]).double())
    torch.testing.assert_close(as_conv.flatten(1), as_fc, rtol=1e-12, atol=1e-12)
    assert _same(conv_to_fc(dense), weights)


def test_fc_to_conv_uses_the_target_shape_and_refuses_what_does_not_fit(official):
    weights, _, _ = load_caffe_weights(official)
    dense = fc_to_conv(weights, target={"fc6-conv": [(256, 8, 14, 14), (256,)]})
    assert dense["fc6-conv"][0].shape == (256, 8, 14, 14)
    with pytest.raises(WeightsError, match="cannot become fc6-conv"):
        fc_to_conv(weights, target={"fc6-conv": [(256, 32, 6, 6), (256,)]})


def test_fit_to_net_lists_every_mismatch_with_both_shapes():
    weights = {"a": [np.zeros((4, 3, 3, 3), np.float32), np.zeros((1, 1, 1, 4), np.float32)],
               "b": [np.zeros((1, 1, 10, 36), np.float32), np.zeros(10, np.float32)],
               "extra": [np.zeros(2, np.float32)]}
    expected = {"a": [(4, 3, 3, 3), (4,)], "b": [(10, 36), (10,)]}
    fitted, ignored, missing = fit_to_net(weights, expected)
    assert fitted["a"][1].shape == (4,) and fitted["b"][0].shape == (10, 36) and ignored == ["extra"]
    wrong = {"a": [(8, 3, 3, 3), (8,)], "b": [(10, 40), (10,)]}
    with pytest.raises(WeightsError) as info:
        fit_to_net(weights, wrong)
    text = str(info.value)
    assert "a blob 0: file 4x3x3x3 vs net 8x3x3x3" in text and "a blob 1: file 1x1x1x4 vs net 8" in text
    assert "b blob 0: file 1x1x10x36 vs net 10x40" in text


def test_missing_layers_are_an_error_unless_allowed():
    weights = {"a": [np.zeros((4,), np.float32)]}
    expected = {"a": [(4,)], "c": [(2, 2)], "d": [(3,)]}
    with pytest.raises(WeightsError, match="lack 2 layer.*c, d.*--allow-missing"):
        fit_to_net(weights, expected)
    fitted, _, missing = fit_to_net(weights, expected, allow_missing=True)
    assert list(fitted) == ["a"] and missing == ["c", "d"]


def test_summary_lists_layers_shapes_and_total():
    text = summary({"conv1": [np.zeros((4, 3, 3, 3), np.float32), np.zeros(4, np.float32)],
                    "fc": [np.zeros((10, 36), np.float32)]})
    assert "conv1  4x3x3x3, 4" in text and "112" in text and "360" in text
    assert text.splitlines()[-1] == "2 layers with weights, 472 parameters"


def test_cli_convert_prints_the_summary_and_errors_in_one_line(official, tmp_path):
    runner = CliRunner()
    result = runner.invoke(main, ["convert", str(official), str(tmp_path / "w.h5")])
    assert result.exit_code == 0, result.output
    assert "(caffemodel) ->" in result.output and "16 layers with weights" in result.output
    result = runner.invoke(main, ["convert", str(official), str(tmp_path / "w.bin")])
    assert result.exit_code == 1 and "cannot infer the output format" in result.output
    result = runner.invoke(main, ["convert", str(official), str(tmp_path / "w.pt"), "--fc-to-conv",
                                  "--conv-to-fc"])
    assert result.exit_code == 1 and "exclude each other" in result.output
    result = runner.invoke(main, ["convert", str(official), str(tmp_path / "w.onnx")])
    assert result.exit_code == 1 and "needs --model" in result.output
    result = runner.invoke(main, ["convert", str(official), str(tmp_path / "no" / "such" / "w.pt")])
    assert result.exit_code == 1 and "output directory" in result.output and "does not exist" in result.output
    (tmp_path / "junk.pt").write_bytes(b"PK\x03\x04junk")
    result = runner.invoke(main, ["convert", str(tmp_path / "junk.pt"), str(tmp_path / "w2.h5")])
    assert result.exit_code == 1 and "not a loadable PyTorch state dict" in result.output


def test_explicit_format_overrides_the_extension(official, tmp_path):
    convert(official, tmp_path / "w.bin", to="h5")
    assert input_format(tmp_path / "w.bin") == "h5"
    convert(official, tmp_path / "w2.bin", to="safetensors")
    assert input_format(tmp_path / "w2.bin") == "safetensors"


def test_pt_zip_crc_is_optional_and_torch_load_ignores_it(official, tmp_path):
    import zipfile
    convert(official, tmp_path / "fast.pt")
    convert(official, tmp_path / "checked.pt", zip_crc=True)
    assert zipfile.ZipFile(tmp_path / "checked.pt").testzip() is None  # every record's CRC32 is right
    fast = torch.load(tmp_path / "fast.pt", weights_only=True)
    checked = torch.load(tmp_path / "checked.pt", weights_only=True)
    assert list(fast) == list(checked) and all(torch.equal(fast[k], checked[k]) for k in fast)


def test_caffes_own_upgrade_of_a_v1_file_converts_to_the_same_weights(tmp_path):
    golden = ROOT / "tests" / "data" / "golden" / "upgrade"  # v1_small_upgraded.caffemodel: BVLC upgrade tool
    v1 = convert(golden / "v1_small.caffemodel", tmp_path / "v1.h5").weights
    upgraded = convert(golden / "v1_small_upgraded.caffemodel", tmp_path / "v2.h5").weights
    assert _same(v1, upgraded)
    assert v1["fc6"][0].shape == (6, 120) and v1["fc6"][1].shape == (6,) and v1["conv1"][0].shape == (4, 3, 3, 3)
    fitted = convert(golden / "v1_small_upgraded.caffemodel", tmp_path / "v3.pt",
                     model=golden / "v1_small_deploy.prototxt").weights
    assert _same(fitted, v1)


def test_the_official_v1_deploy_prototxt_works_as_model():
    from vggproto.net.shapes import net_param_shapes
    _, shapes = net_param_shapes(ROOT / "tests" / "data" / "golden" / "upgrade" / "vgg16_v1.prototxt")
    assert list(shapes)[0] == "conv1_1" and list(shapes)[-1] == "fc8" and len(shapes) == 16
    assert shapes["fc6"] == [(4096, 25088), (4096,)] and shapes["conv5_3"] == [(512, 512, 3, 3), (512,)]
