"""ONNX export keeps the batch (and height and width where the net allows) symbolic, for every layer pattern of
the real nets (issue 26, item 1): each tiny net is exported once, then run in onnxruntime at batch 1 and 3 (and
at another height x width where the export says they are dynamic) against the interpreter at the same shapes.

The first case is the bug the issue found: a Softmax over an N x C x 1 x 1 blob (SqueezeNet, MobileNet) baked
the batch into a Reshape, and onnxruntime died at the second batch size.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from vggproto.convert.onnx import OnnxExportError, export_onnx
from vggproto.net.interpreter import Net

onnxruntime = pytest.importorskip("onnxruntime")

FORKS = Path(__file__).parent / "data" / "forks"
G = 'weight_filler { type: "gaussian" std: 0.5 } bias_filler { type: "gaussian" std: 0.5 }'


def conv(name: str, bottom: str, n: int, k: int = 3, extra: str = "", pad: int | None = None) -> str:
    return (f'layer {{ name: "{name}" type: "Convolution" bottom: "{bottom}" top: "{name}" convolution_param '
            f'{{ num_output: {n} kernel_size: {k} pad: {k // 2 if pad is None else pad} {extra} {G} }} }}\n')


def layer(name: str, kind: str, bottoms: str, text: str = "", tops: str | None = None) -> str:
    b = "".join(f' bottom: "{x}"' for x in bottoms.split())
    t = "".join(f' top: "{x}"' for x in (name if tops is None else tops).split())
    return f'layer {{ name: "{name}" type: "{kind}"{b}{t} {text} }}\n'


def data(c: int = 3, h: int = 8, w: int = 8, name: str = "data") -> str:
    return (f'layer {{ name: "{name}" type: "Input" top: "{name}" '
            f'input_param {{ shape {{ dim: 1 dim: {c} dim: {h} dim: {w} }} }} }}\n')


GAP = "pooling_param { pool: AVE global_pooling: true }"
#: name -> (prototxt, whether height and width must come out dynamic)
PATTERNS: dict[str, tuple[str, bool]] = {
    "squeezenet_softmax_nc11": (data() + conv("c1", "data", 6) + layer("r", "ReLU", "c1", tops="c1")
                                + conv("c2", "c1", 5, 1) + layer("gap", "Pooling", "c2", GAP)
                                + layer("prob", "Softmax", "gap"), True),
    "mobilenet_softmax_nc11": (data() + conv("dw", "data", 3, 3, "group: 3") + conv("pw", "dw", 8, 1)
                               + layer("gap", "Pooling", "pw", GAP) + conv("fc", "gap", 5, 1)
                               + layer("prob", "Softmax", "fc"), True),
    "mtcnn_det1_softmax_nc11": (data(3, 12, 12) + conv("c1", "data", 10, pad=0) + layer("pr", "PReLU", "c1", tops="c1")
                                + layer("pool", "Pooling", "c1", "pooling_param { pool: MAX kernel_size: 2 stride: 2 }")
                                + conv("c2", "pool", 16, pad=0) + conv("c3", "c2", 2, pad=0)
                                + layer("prob1", "Softmax", "c3"), True),
    "flatten_innerproduct_softmax": (data() + conv("c", "data", 4) + layer("f", "Flatten", "c")
                                     + layer("ip", "InnerProduct", "f", f"inner_product_param {{ num_output: 5 {G} }}")
                                     + layer("prob", "Softmax", "ip"), False),
    "innerproduct_axis2": (data() + layer("ip", "InnerProduct", "data",
                                          f"inner_product_param {{ num_output: 5 axis: 2 {G} }}"), False),
    "reshape_copy_and_infer": (data(4) + conv("c", "data", 6)
                               + layer("rs", "Reshape", "c", "reshape_param { shape { dim: 0 dim: 2 dim: -1 dim: 0 } }")
                               + layer("sm", "Softmax", "rs"), True),
    "reshape_axis_num_axes": (data(4) + layer("rs", "Reshape", "data",
                                              "reshape_param { shape { dim: 2 dim: 2 } axis: 1 num_axes: 1 }"), True),
    "crop_fcn": (data(3, 12, 12) + conv("c", "data", 4, 3, "stride: 2") + layer(
        "up", "Deconvolution", "c", f"convolution_param {{ num_output: 2 kernel_size: 4 stride: 2 {G} }}")
        + layer("crop", "Crop", "up data", "crop_param { axis: 2 offset: 1 }"), True),
    "slice_concat_eltwise": (data(4) + layer("sl", "Slice", "data", "slice_param { axis: 1 slice_point: 1 }",
                                             "s1 s2")
                             + conv("a", "s1", 1) + layer("cat", "Concat", "a s2")
                             + layer("sum", "Eltwise", "cat data", "eltwise_param { coeff: 0.5 coeff: -1 }"), True),
    "scale_bias_broadcast": (data(3) + conv("c", "data", 3) + layer("gap", "Pooling", "c", GAP)
                             + layer("f", "Flatten", "gap")
                             + layer("sc", "Scale", "c f", "scale_param { axis: 0 }")
                             + layer("b", "Bias", "sc f", "bias_param { axis: 0 }"), True),
    "normalize_permute_priorbox_ssd": (data(3, 16, 16) + conv("c", "data", 4, 3, "stride: 4")
                                       + layer("n", "Normalize", "c", "norm_param { across_spatial: false }")
                                       + conv("loc", "n", 8)
                                       + layer("perm", "Permute", "loc", "permute_param { order: 0 order: 2 "
                                               "order: 3 order: 1 }")
                                       + layer("flat", "Flatten", "perm")
                                       + layer("prior", "PriorBox", "n data",
                                               "prior_box_param { min_size: 4 max_size: 8 aspect_ratio: 2 flip: true "
                                               "variance: 0.1 variance: 0.1 variance: 0.2 variance: 0.2 }"), True),
}


def random_weights(net: Net, seed: int = 0) -> dict[str, list[np.ndarray]]:
    """He-scaled normal filters, small biases; BatchNorm/BN blobs in [0.5, 1.5] (positive variances), PReLU
    slopes in [0, 0.5]: the published nets' prototxts have no fillers, so their defaults would be all zeros."""
    rng = np.random.default_rng(seed)
    out = {}
    for name, blobs in net.params.items():
        kind = net.layer_dict[name].spec.param.type
        arrays = []
        for i, blob in enumerate(blobs):
            shape = tuple(blob.shape)
            if kind in ("BatchNorm", "BN"):
                arrays.append(rng.uniform(0.5, 1.5, shape))
            elif kind == "PReLU":
                arrays.append(rng.uniform(0, 0.5, shape))
            elif i == 0 and len(shape) > 1:
                arrays.append(rng.standard_normal(shape) * np.sqrt(2.0 / max(1, int(np.prod(shape[1:])))))
            else:
                arrays.append(rng.normal(0, 0.1, shape))
        out[name] = [a.astype(np.float32) for a in arrays]
    return out


def _with_weights(model: str) -> tuple[Net, dict[str, list[np.ndarray]]]:
    """The net with :func:`random_weights` loaded, and those weights (for :func:`export_onnx`)."""
    from vggproto.net.weights import load_arrays
    net = Net(model, seed=0)
    weights = random_weights(net)
    load_arrays(net, weights, "random")
    return net, weights


def _interpreter(net: Net, inputs: dict[str, np.ndarray], outputs: list[str]) -> list[np.ndarray]:
    with torch.no_grad():
        net.forward(**{k: torch.from_numpy(v) for k, v in inputs.items()})
    return [net.blobs[name].numpy() for name in outputs]


def _check_shapes(path: Path, net: Net, check, shapes: list[dict[str, tuple]]) -> None:
    """onnxruntime on the file = the interpreter at every one of ``shapes`` (input name -> shape)."""
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(5)
    for shape in shapes:
        feed = {name: rng.standard_normal(s).astype(np.float32) for name, s in shape.items()}
        got = session.run(check.outputs, {k: v for k, v in feed.items() if k in check.inputs})
        for name, want, have in zip(check.outputs, _interpreter(net, feed, check.outputs), got):
            assert want.shape == have.shape, (name, shape)
            np.testing.assert_allclose(have, want, rtol=1e-4, atol=1e-4 * np.abs(want).max(), err_msg=str(shape))


def _scaled(net: Net, batch: int, factor: int = 1) -> dict[str, tuple]:
    return {name: (batch, *net.blob_shapes[name][1:2], *(d * factor for d in net.blob_shapes[name][2:]))
            for name in net.input_names}


@pytest.mark.parametrize("name", sorted(PATTERNS))
def test_pattern_exports_with_a_symbolic_batch(name: str, tmp_path: Path) -> None:
    text, spatial = PATTERNS[name]
    check = export_onnx(text, None, tmp_path / "n.onnx")
    assert check.dynamic["data"][0] == "batch", check
    assert ("height" in check.dynamic["data"].values()) == spatial, check
    net = Net(text, seed=0)
    shapes = [_scaled(net, 1), _scaled(net, 3)] + ([_scaled(net, 3, 2)] if spatial else [])
    _check_shapes(tmp_path / "n.onnx", net, check, shapes)
    assert not spatial or not any("height" in line for line in check.fixed), check.fixed


def test_a_pinned_dimension_is_said_in_one_line_naming_the_layer(tmp_path: Path) -> None:
    text, _ = PATTERNS["flatten_innerproduct_softmax"]
    check = export_onnx(text, None, tmp_path / "n.onnx")
    assert len(check.fixed) == 1 and "\n" not in check.fixed[0], check.fixed
    assert check.fixed[0].startswith("height and width fixed") and "'ip'" in check.fixed[0], check.fixed


def test_a_net_pinning_its_batch_keeps_it_fixed(tmp_path: Path) -> None:
    text = data(4) + layer("rs", "Reshape", "data", "reshape_param { shape { dim: 1 dim: 256 } }")
    check = export_onnx(text, None, tmp_path / "n.onnx")
    assert 0 not in check.dynamic.get("data", {}) and check.fixed[0].startswith("batch fixed"), check
    assert "layer 'rs' (Reshape)" in check.fixed[0] and "\n" not in check.fixed[0], check.fixed


@pytest.mark.parametrize("name", ["shufflenet_deploy.prototxt", "se_resnet50_deploy.prototxt",
                                  "pspnet_deploy.prototxt", "densenet121_deploy.prototxt"])
def test_fork_nets_export_with_a_symbolic_batch(name: str, tmp_path: Path) -> None:
    net, weights = _with_weights(str(FORKS / name))
    check = export_onnx(str(FORKS / name), weights, tmp_path / "n.onnx")
    assert check.dynamic["data"][0] == "batch", check
    assert max(np.abs(o).max() for o in _interpreter(net, {"data": np.ones(net.blob_shapes["data"], np.float32)},
                                                      check.outputs)) > 1e-3   # not a net of zeros
    _check_shapes(tmp_path / "n.onnx", net, check, [_scaled(net, 1), _scaled(net, 3)])


def _unpooling_net(upsample: str, h: int = 8, w: int = 8) -> str:
    """ENet / SegNet's pattern: ReLU (ties of zeros in most windows, as a real net's) -> MAX pooling with its mask
    top -> a convolution -> Upsample by that mask -> BN, so that a different argmax moves values."""
    bias = 'bias_filler { type: "constant" value: -1.5 }'
    return (data(3, h, w) + conv("c1", "data", 4, 3, bias).replace(f" {G} ", ' weight_filler { type: "gaussian" '
                                                                       'std: 0.5 } ')
            + layer("r1", "ReLU", "c1", tops="c1")
            + layer("pool", "Pooling", "c1", "pooling_param { pool: MAX kernel_size: 2 stride: 2 }", "p mask")
            + conv("c2", "p", 4)
            + layer("up", "Upsample", "c2 mask", f"upsample_param {{ {upsample} }}")
            + layer("bn", "BN", "up", 'bn_param { bn_mode: INFERENCE scale_filler { type: "gaussian" std: 1 } '
                                      'shift_filler { type: "gaussian" } }'))


@pytest.mark.parametrize("upsample,spatial", [("scale: 2", True), ("upsample_h: 8 upsample_w: 8", False)])
def test_unpooling_is_exact_at_every_batch(upsample: str, spatial: bool, tmp_path: Path) -> None:
    text = _unpooling_net(upsample)
    check = export_onnx(text, None, tmp_path / "n.onnx")
    assert check.dynamic["data"][0] == "batch" and ("height" in check.dynamic["data"].values()) == spatial, check
    assert spatial or "layer 'up' (Upsample)" in check.fixed[0], check.fixed
    net = Net(text, seed=0)
    with torch.no_grad():   # the premise: most pooling windows are all zeros, so the argmax rule decides
        net.forward(data=torch.randn(3, 3, 8, 8))
    assert (net.blobs["p"] == 0).float().mean() > 0.2
    _check_shapes(tmp_path / "n.onnx", net, check,
                  [_scaled(net, 1), _scaled(net, 3)] + ([_scaled(net, 3, 2)] if spatial else []))


@pytest.mark.parametrize("name,spatial", [("enet_deploy.prototxt", True), ("segnet_inference.prototxt", False)])
def test_enet_and_segnet_export_exactly(name: str, spatial: bool, tmp_path: Path) -> None:
    net, weights = _with_weights(str(FORKS / name))
    check = export_onnx(str(FORKS / name), weights, tmp_path / "n.onnx")
    assert check.dynamic["data"][0] == "batch" and ("height" in check.dynamic["data"].values()) == spatial, check
    _check_shapes(tmp_path / "n.onnx", net, check, [_scaled(net, 1), _scaled(net, 3)])


SILENCED = (data(1) + conv("conv", "data", 4) + layer("relu", "ReLU", "conv", tops="conv")
            + conv("ab", "conv", 2, 1) + layer("silence", "Silence", "ab", tops=""))


def _cli(tmp_path: Path, text: str, *extra: str) -> tuple[object, Path]:
    from click.testing import CliRunner

    from vggproto.cli import main
    model = tmp_path / "net.prototxt"
    model.write_text(text)
    Net(text, seed=1).save_weights(tmp_path / "w.caffemodel")
    out = tmp_path / "o.onnx"
    return CliRunner().invoke(main, ["convert", str(tmp_path / "w.caffemodel"), str(out), "--model", str(model),
                                     *extra]), out


def test_a_silenced_net_exports_the_blobs_named_by_outputs(tmp_path: Path) -> None:
    result, out = _cli(tmp_path, SILENCED)
    assert result.exit_code == 1 and "--outputs" in result.output and not out.exists(), result.output
    result, out = _cli(tmp_path, SILENCED, "--outputs", "ab,conv")
    assert result.exit_code == 0, result.output
    assert "ONNX outputs ab, conv: dynamic batch, height, width" in result.output
    net = Net(SILENCED, str(tmp_path / "w.caffemodel"))
    x = np.random.default_rng(0).standard_normal((3, 1, 5, 7)).astype(np.float32)
    session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    for have, want in zip(session.run(["ab", "conv"], {"data": x}), _interpreter(net, {"data": x}, ["ab", "conv"])):
        np.testing.assert_allclose(have, want, rtol=1e-5, atol=1e-5)


def test_unknown_outputs_are_one_line_listing_the_blobs(tmp_path: Path) -> None:
    result, out = _cli(tmp_path, SILENCED, "--outputs", "ab,nope")
    assert result.exit_code == 1 and not out.exists()
    assert result.output.strip().splitlines() == [
        f"vggproto: error: {tmp_path / 'net.prototxt'}: no blob 'nope' to export; the net's blobs: data, conv, ab"]


@pytest.mark.parametrize("where", ["session", "run"])
def test_an_onnxruntime_failure_is_one_line_naming_the_layer(where: str, tmp_path: Path, monkeypatch,
                                                             capfd) -> None:
    class Fail(Exception):
        pass

    message = ("[ONNXRuntimeError] : 1 : FAIL : Non-zero status code returned while running Conv node. "
               "Name:'/net/layer_list.3/Conv' Status Message: /onnxruntime_src/onnxruntime/core/providers/cpu/"
               "nn/conv.cc:123 onnxruntime::Conv<float>::Compute(OpKernelContext*) const out of memory\n  frame 1")

    class Session:
        def __init__(self, *args, **kwargs):
            if where == "session":
                raise Fail(message)

        def get_inputs(self):
            return [type("I", (), {"name": "data"})()]

        def get_outputs(self):
            return [type("O", (), {"name": "ab"})()]

        def run(self, *args):
            raise Fail(message)
    monkeypatch.setattr(onnxruntime, "InferenceSession", Session)
    capfd.readouterr()
    result, out = _cli(tmp_path, SILENCED, "--outputs", "ab")
    assert result.exit_code == 1 and not out.exists()
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "layer 'ab' (Convolution): out of memory" in lines[0], lines
    assert capfd.readouterr() == ("", "")


def _other_argmax(pick_min: bool):
    """A stand-in for pooling's mask: eagerly the window's last maximum in row order (another valid argmax than
    onnxruntime's first, as a float near-tie gives), or with ``pick_min``, in the exported graph only, the
    window's minimum (a wrong one)."""
    import vggproto.layers.pool as pool
    original = pool.pool2d

    def pool2d(x, method, kernel, stride, pad, out, train, mask=False, ceil=True):
        y, index = original(x, method, kernel, stride, pad, out, train, mask, ceil)
        if not mask or torch.onnx.is_in_onnx_export() != pick_min:
            return y, index
        width = x.shape[-1]
        _, flipped = original(-x if pick_min else x.flip(-1), method, kernel, stride, pad, out, train, True, ceil)
        rows, cols = flipped.long() // width, flipped.long() % width
        return y, (rows * width + (cols if pick_min else width - 1 - cols)).to(x.dtype)
    return pool2d


@pytest.mark.parametrize("pick_min", [False, True])
def test_an_argmax_near_tie_is_adopted_a_wrong_argmax_is_not(pick_min: bool, tmp_path: Path, monkeypatch) -> None:
    """The interpreter's mask picks other maxima of tied windows than onnxruntime's (what a float near-tie does
    at scale: ENet at 512x1024, batch 2): the check adopts onnxruntime's where they are maxima too and the
    outputs then match; a mask pointing at a non-maximum is an error naming the pooling layer."""
    import vggproto.convert.onnx_ties as ties
    import vggproto.layers.pool as pool
    monkeypatch.setattr(pool, "pool2d", _other_argmax(pick_min))
    calls, original = [], ties.check_ties
    monkeypatch.setattr(ties, "check_ties", lambda *args: calls.append(args[4]) or original(*args))
    text = _unpooling_net("scale: 2")
    if not pick_min:
        check = export_onnx(text, None, tmp_path / "n.onnx")
        assert check.dynamic["data"][0] == "batch" and not check.fixed, check
        assert len(calls) == 3, calls   # every run (declared, batch 2, 2x H/W) needed the near-tie check
        return
    with pytest.raises(OnnxExportError, match=r"layer 'pool' \(Pooling\): onnxruntime's argmax mask points at"):
        export_onnx(text, None, tmp_path / "n.onnx")
    assert not (tmp_path / "n.onnx").exists()


@pytest.mark.parametrize("name,other", [("mobilenet_ssd_deploy.prototxt", (1, 3, 240, 320)),
                                        ("vgg_ssd300_deploy.prototxt", (1, 3, 320, 320))])
def test_ssd_exports_up_to_detection_outputs_bottoms(name: str, other: tuple, tmp_path: Path) -> None:
    """DetectionOutput is refused, but --outputs naming its bottoms exports everything before it, dynamic."""
    net, weights = _with_weights(str(FORKS / name))
    blobs = ["mbox_loc", "mbox_conf_flatten", "mbox_priorbox"]
    with pytest.raises(OnnxExportError, match="DetectionOutput"):
        export_onnx(str(FORKS / name), weights, tmp_path / "n.onnx")
    check = export_onnx(str(FORKS / name), weights, tmp_path / "n.onnx", outputs=blobs)
    assert check.outputs == blobs and check.dynamic["data"] == {0: "batch", 2: "height", 3: "width"}, check
    assert 0 not in check.dynamic["mbox_priorbox"]   # one set of priors, whatever the batch
    _check_shapes(tmp_path / "n.onnx", net, check, [_scaled(net, 1), _scaled(net, 2), {"data": other}])
