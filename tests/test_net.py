"""Net semantics (Caffe: src/caffe/net.cpp): filtering, shapes and errors at construction, loss weights, weight
sharing, propagate_down / force_backward, weight loading (legacy shapes, several files), saving, sharing with
another net, the shape table, and VGG-16 against OpenCV's Caffe importer."""
from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from vggproto.caffe.proto import caffe_pb2
from vggproto.errors import NetError, WeightsError
from vggproto.net.interpreter import Net
from vggproto.net.table import shape_table

SMALL = """name: "small"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 3 dim: %d dim: %d } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  convolution_param { num_output: 4 kernel_size: 3 pad: 1 weight_filler { type: "gaussian" std: 0.2 }
                      bias_filler { type: "gaussian" std: 0.1 } } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1" pooling_param { pool: MAX kernel_size: 2
  stride: 2 } }
layer { name: "fc" type: "InnerProduct" bottom: "pool1" top: "fc"
  inner_product_param { num_output: 5 weight_filler { type: "xavier" } bias_filler { type: "gaussian" std: 0.1 } } }
"""


def small(h=8, w=8, **kw) -> Net:
    return Net(SMALL % (h, w), seed=kw.pop("seed", 1), **kw)


def test_forward_shapes_outputs_and_inplace_blobs():
    net = small()
    assert net.blob_shapes == {"data": (2, 3, 8, 8), "conv1": (2, 4, 8, 8), "pool1": (2, 4, 4, 4), "fc": (2, 5)}
    x = torch.randn(2, 3, 8, 8)
    out = net(data=x)
    assert list(out) == ["fc"]
    assert (net.blobs["conv1"] >= 0).all()   # in place: the blob holds the post-ReLU value
    w, b = net.params["conv1"]
    conv = torch.relu(torch.nn.functional.conv2d(x, w, b, padding=1))
    ref = torch.nn.functional.max_pool2d(conv, 2).flatten(1) @ net.params["fc"][0].t() + net.params["fc"][1]
    torch.testing.assert_close(out["fc"], ref)
    assert net.loss.item() == 0.0
    net(data=x.numpy())   # numpy accepted; previous inputs are kept when not given (pycaffe style)
    torch.testing.assert_close(net()["fc"], out["fc"])
    with pytest.raises(NetError, match="unknown input.*'?label.*fed through: data"):
        net(data=x, label=x)


def test_torch_module_methods_work_on_a_net():
    """A Net is an nn.Module: eval()/train()/double() must not be shadowed by layer attributes (the phase is the
    prototxt's, fixed at construction as in Caffe, so eval() changes no result)."""
    net = small()
    x = torch.randn(2, 3, 8, 8)
    before = net(data=x)["fc"]
    assert net.eval() is net and not net.training and net.train() is net and net.training
    torch.testing.assert_close(net.eval()(data=x)["fc"], before)
    assert net.double()(data=x.double())["fc"].dtype == torch.float64


INPLACE = """
layer { name: "in" type: "Input" top: "data" input_param { shape { dim: 1 dim: 2 dim: 3 dim: 3 } } }
layer { name: "relu0" type: "ReLU" bottom: "data" top: "data" }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
        convolution_param { num_output: 2 kernel_size: 1 weight_filler { type: "gaussian" std: 1 } } }
layer { name: "view" type: "Flatten" bottom: "conv" top: "flat" }
layer { name: "relu1" type: "ReLU" bottom: "conv" top: "conv" }
layer { name: "fc" type: "InnerProduct" bottom: "conv" top: "fc"
        inner_product_param { num_output: 4 weight_filler { type: "gaussian" std: 1 } } }
layer { name: "relu2" type: "ReLU" bottom: "fc" top: "fc" }
"""


def test_in_place_relu_reuses_memory_only_where_nothing_else_sees_it():
    """Without autograd an in-place ReLU overwrites a fresh Convolution/InnerProduct output (as Caffe and
    torchvision do), never a fed input and never a blob another layer has already read (here a Flatten view)."""
    net = Net(INPLACE, seed=3)
    assert [net.layer_dict[n].may_overwrite for n in ("relu0", "relu1", "relu2")] == [False, False, True]
    x = torch.randn(1, 2, 3, 3)
    kept = x.clone()
    with torch.no_grad():
        out = net(data=x)
    assert torch.equal(x, kept)                                          # the caller's tensor is untouched
    conv = torch.nn.functional.conv2d(torch.relu(x), net.params["conv"][0], net.params["conv"][1])
    torch.testing.assert_close(net.blobs["flat"], conv.flatten(1))       # the view still holds pre-ReLU values
    fc = torch.relu(torch.relu(conv).flatten(1) @ net.params["fc"][0].t() + net.params["fc"][1])
    torch.testing.assert_close(out["fc"], fc)
    with_grad = Net(INPLACE, seed=3)(data=x)                              # autograd: out of place, same values
    torch.testing.assert_close(with_grad["fc"], fc)
    with_grad["fc"].sum().backward()


def test_pre_relu_activations_are_freed_unless_diffs_are_tracked():
    """Training memory: an in-place ReLU's input (the conv output) is not kept alive by the net, as in torchvision,
    except with ``track_diffs`` (Caffe's per-blob diffs need the first value of every blob)."""
    import weakref
    for track in (False, True):
        net = small()
        net.track_diffs = track
        seen = []
        net.layer_dict["conv1"].register_forward_hook(lambda mod, args, out: seen.append(weakref.ref(out[0])))
        net(data=torch.randn(2, 3, 8, 8))["fc"].sum().backward()
        assert (seen[0]() is not None) == track
        if track:
            assert net.diff("conv1").shape == (2, 4, 8, 8)
        else:
            with pytest.raises(NetError, match="set net.track_diffs = True before forward"):
                net.diff("conv1")


def test_a_forward_lets_the_last_pass_blobs_go_before_computing_its_own():
    """Inference memory: while pass 2 runs, pass 1's activations are no longer held by the net (they would be
    overwritten in place in Caffe), so a loop of forwards peaks at one pass of activations, not two."""
    import weakref
    net = small()
    with torch.inference_mode():
        net(data=torch.randn(2, 3, 8, 8))
        old = weakref.ref(net.blobs["pool1"])
        alive_during = []
        net.layer_dict["conv1"].register_forward_hook(lambda mod, args, out: alive_during.append(old() is not None))
        net(data=torch.randn(2, 3, 8, 8))
    assert alive_during == [False] and set(net.blobs) >= {"data", "conv1", "pool1", "fc"}


def test_outputs_are_sorted_like_caffe():
    net = Net("""layer { name: "in" type: "Input" top: "z" top: "a" input_param { shape { dim: 2 } } }
                 layer { name: "t" type: "TanH" bottom: "z" top: "m" }""")
    assert net.output_names == ["a", "m"]


FILTERED = """
layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 1 dim: 2 } } }
layer { name: "train_only" type: "TanH" bottom: "x" top: "t" include { phase: TRAIN } }
layer { name: "test_only" type: "AbsVal" bottom: "x" top: "t" include { phase: TEST } }
layer { name: "staged" type: "ReLU" bottom: "x" top: "s" include { stage: "deploy" min_level: 1 } }
layer { name: "not_staged" type: "Sigmoid" bottom: "x" top: "n" exclude { stage: "deploy" } }
"""


def test_netstate_rule_filtering():
    assert Net(FILTERED, phase="TRAIN").layer_names == ["in", "train_only", "not_staged"]
    assert Net(FILTERED).layer_names == ["in", "test_only", "not_staged"]
    assert Net(FILTERED, stages=["deploy"]).layer_names == ["in", "test_only"]
    assert Net(FILTERED, stages=["deploy"], level=1).layer_names == ["in", "test_only", "staged"]


def test_errors_name_file_line_layer_and_supported_types(tmp_path):
    path = tmp_path / "bad.prototxt"
    path.write_text(SMALL % (8, 8) + 'layer { name: "oops" type: "Frobnicate" bottom: "fc" top: "f" }\n')
    with pytest.raises(NetError) as info:
        Net(str(path))
    message = str(info.value)
    assert message.startswith(f"{path}:11: layer 'oops' (Frobnicate): unknown layer type 'Frobnicate'")
    assert "Convolution" in message and "InnerProduct" in message and "Pooling" in message
    path.write_text(SMALL % (8, 8) + 'layer { name: "l" type: "TanH" bottom: "nothere" top: "f" }\n')
    with pytest.raises(NetError, match=r"bad.prototxt:11: layer 'l' \(TanH\): unknown bottom blob 'nothere'"):
        Net(str(path))
    path.write_text(SMALL % (8, 8) + 'layer { name: "py" type: "WindowData" top: "f" }\n')
    with pytest.raises(NetError, match="'WindowData' layers are not supported"):
        Net(str(path))
    path.write_text(SMALL % (8, 8) + 'layer { name: "r" type: "Relu" bottom: "fc" top: "f" }\n')
    with pytest.raises(NetError, match="unknown layer type 'Relu'; did you mean ReLU\\? Supported types"):
        Net(str(path))


def test_loss_weights_default_and_explicit():
    text = SMALL % (4, 4) + """
layer { name: "label" type: "Input" top: "label" input_param { shape { dim: 2 } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "fc" bottom: "label" top: "loss" }
layer { name: "aux" type: "TanH" bottom: "fc" top: "aux" loss_weight: 0.5 }
"""
    net = Net(text, seed=3)
    assert net.loss_weights == {"loss": 1.0, "aux": 0.5}
    out = net(data=torch.randn(2, 3, 4, 4), label=torch.tensor([1.0, 3.0]))
    fc = net.blobs["fc"].detach()
    expected = torch.nn.functional.cross_entropy(fc, torch.tensor([1, 3])) + 0.5 * torch.tanh(fc).sum()
    torch.testing.assert_close(net.loss.detach(), expected)
    torch.testing.assert_close(out["loss"].detach(), expected - 0.5 * torch.tanh(fc).sum())
    net.loss.backward()
    assert net.params["conv1"][0].grad is not None
    with pytest.raises(NetError, match="loss_weight must be unspecified or given once per top"):
        Net(text.replace("loss_weight: 0.5", "loss_weight: 0.5 loss_weight: 1"))


def test_facts_a_net_answers_producer_and_first_accuracy_top():
    net = small()
    assert (net.producer("conv1"), net.producer("pool1"), net.producer("nothing")) == ("conv1", "pool1", None)
    assert net.first_accuracy_top is None
    text = SMALL % (4, 4) + """
layer { name: "label" type: "Input" top: "label" input_param { shape { dim: 2 } } }
layer { name: "top5" type: "Accuracy" bottom: "fc" bottom: "label" top: "acc5" accuracy_param { top_k: 5 } }
layer { name: "top1" type: "Accuracy" bottom: "fc" bottom: "label" top: "acc1" }
"""
    assert Net(text).first_accuracy_top == "acc5"


SHARED = """force_backward: true
layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 3 dim: 6 } } }
layer { name: "a" type: "InnerProduct" bottom: "x" top: "ya" param { name: "w" lr_mult: 2 } param { lr_mult: 0 }
  inner_product_param { num_output: 6 weight_filler { type: "gaussian" } } }
layer { name: "b" type: "InnerProduct" bottom: "ya" top: "yb" param { name: "w" %s }
  inner_product_param { num_output: 6 bias_term: false } }
"""


def test_weight_sharing_by_param_name():
    net = Net(SHARED % "", seed=0)
    assert net.params["a"][0] is net.params["b"][0]
    owners = [(p.layer, p.index, p.lr_mult, p.decay_mult) for p in net.learnable_params]
    assert owners == [("a", 0, 2.0, 1.0), ("a", 1, 0.0, 1.0)]
    x = torch.randn(3, 6)
    out = net(x=x)
    w = net.params["a"][0].detach().clone().requires_grad_(True)
    ref = (x @ w.t()) @ w.t()
    torch.testing.assert_close(out["yb"], ref.detach())
    out["yb"].sum().backward()
    ref.sum().backward()
    torch.testing.assert_close(net.params["a"][0].grad, w.grad)   # gradients of both uses summed
    assert net.params["a"][1].grad is not None   # lr_mult 0 but force_backward: Caffe still computes it


def test_sharing_shape_rules():
    strict = SHARED.replace("num_output: 6 bias_term: false", "num_output: 4 bias_term: false")
    with pytest.raises(NetError, match=r"layer 'b' \(InnerProduct\): shared param 'w'.*shape \(6, 6\) vs \(4, 6\)"):
        Net(strict % "")
    # PERMISSIVE: (4, 9) owner and (9, 4) user have the same count; the user sees a reshaped view
    text = """layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 2 dim: 9 } } }
layer { name: "a" type: "InnerProduct" bottom: "x" top: "ya" param { name: "w" }
  inner_product_param { num_output: 4 bias_term: false weight_filler { type: "gaussian" } } }
layer { name: "b" type: "InnerProduct" bottom: "ya" top: "yb" param { name: "w" share_mode: PERMISSIVE }
  inner_product_param { num_output: 9 bias_term: false } }"""
    net = Net(text)
    x = torch.randn(2, 9)
    w = net.params["a"][0].detach()
    torch.testing.assert_close(net(x=x)["yb"], (x @ w.t()) @ w.reshape(9, 4).t())
    with pytest.raises(NetError, match="mismatched lr_mult"):
        Net(SHARED % "lr_mult: 3")


def test_propagate_down_and_lr_mult_zero_without_force_backward():
    text = SMALL.replace('top: "conv1"\n  convolution_param', 'top: "conv1" param { lr_mult: 0 } param { lr_mult: 0 }'
                         '\n  convolution_param') % (4, 4)
    text = text.replace('bottom: "pool1" top: "fc"', 'bottom: "pool1" top: "fc" propagate_down: false')
    net = Net(text)
    x = torch.randn(2, 3, 4, 4, requires_grad=True)
    net(data=x)["fc"].sum().backward()
    assert net.params["fc"][0].grad is not None
    assert net.params["conv1"][0].grad is None and x.grad is None
    forced = Net("force_backward: true\n" + text.replace(" propagate_down: false", ""))
    forced(data=x)["fc"].sum().backward()
    assert forced.params["conv1"][0].grad is not None   # force_backward computes lr_mult 0 diffs (golden quirk)


def _legacy_caffemodel(path, net: Net, extra_layer: bool = True) -> None:
    model = caffe_pb2.NetParameter(name="legacy")
    for name, blobs in net.params.items():
        layer = model.layers.add(name=name)
        for b in blobs:
            array = b.detach().numpy()
            dims = (1,) * (4 - array.ndim) + array.shape
            layer.blobs.add(num=dims[0], channels=dims[1], height=dims[2], width=dims[3], data=array.ravel())
    if extra_layer:
        model.layers.add(name="fc8_unused").blobs.add(num=1, channels=1, height=1, width=2, data=[1, 2])
    path.write_bytes(model.SerializeToString())


def test_legacy_weights_ignored_layers_and_several_files(tmp_path, caplog):
    source = small(seed=11)
    _legacy_caffemodel(tmp_path / "legacy.caffemodel", source)   # fc 1x1x5x64, biases 1x1x1xN
    with caplog.at_level(logging.INFO, logger="vggproto.net.interpreter"):
        net = small(seed=99, weights=str(tmp_path / "legacy.caffemodel"))
    assert "Ignoring source layer fc8_unused" in caplog.text
    for name in ("conv1", "fc"):
        for mine, theirs in zip(net.params[name], source.params[name]):
            assert torch.equal(mine, theirs)
    other = small(seed=5)
    other.save_weights(tmp_path / "other.caffemodel")
    net.load_weights(f"{tmp_path / 'legacy.caffemodel'},{tmp_path / 'other.caffemodel'}")   # applied in order
    assert torch.equal(net.params["fc"][0], other.params["fc"][0])


def test_weight_mismatch_names_layer_and_both_shapes(tmp_path):
    small().save_weights(tmp_path / "w.caffemodel")
    with pytest.raises(WeightsError) as info:
        small(6, 6, weights=str(tmp_path / "w.caffemodel"))   # fc expects 4·3·3 = 36 inputs, file has 64
    message = str(info.value)
    assert ("<text>:9: layer 'fc' (InnerProduct) param 0: source shape 5 64 (320) vs target shape 5 36 (180)"
            in message)
    assert "conv1" not in message


@pytest.mark.parametrize("suffix", [".caffemodel", ".h5"])
def test_save_load_roundtrip_and_share(tmp_path, suffix):
    net = small(seed=2)
    net.save_weights(tmp_path / f"w{suffix}")
    copy = small(seed=3, weights=str(tmp_path / f"w{suffix}"))
    x = torch.randn(2, 3, 8, 8)
    torch.testing.assert_close(copy(data=x)["fc"], net(data=x)["fc"])
    (tmp_path / f"w{suffix}").rename(tmp_path / "renamed.weights")   # the format is detected from content
    again = small(seed=6, weights=str(tmp_path / "renamed.weights"))
    assert torch.equal(again.params["conv1"][0], net.params["conv1"][0])
    shared = small(seed=4)
    shared.share_weights_from(net)
    assert shared.params["fc"][0] is net.params["fc"][0]
    assert [p.param for p in shared.learnable_params][0] is net.params["conv1"][0]


def test_shape_table():
    table = shape_table(small())
    assert "conv1  Convolution  conv1  2 4 8 8 (512)" in table.replace("   ", "  ").replace("   ", "  ")
    assert "fc" in table and f"Total params: {4 * 27 + 4 + 5 * 64 + 5:,}" in table


def test_float64_gradcheck_of_a_small_net():
    net = Net(SMALL % (4, 5), seed=0).double()
    x = torch.randn(2, 3, 4, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: net(data=t)["fc"], (x,), fast_mode=True)
    params = [p for p in net.parameters()]
    assert all(p.dtype == torch.float64 for p in params)


# ------------------------------------------------------------------------------------------ VGG-16 vs OpenCV

def vgg16_deploy() -> str:
    """VGG-16 (config D) deploy net as in the official release (reference section D), in V2 syntax."""
    lines = ['name: "VGG_ILSVRC_16_layers"',
             'layer { name: "input" type: "Input" top: "data" input_param { shape { dim: 1 dim: 3 dim: 224 '
             'dim: 224 } } }']
    bottom = "data"
    for block, (width, convs) in enumerate(zip((64, 128, 256, 512, 512), (2, 2, 3, 3, 3)), start=1):
        for i in range(1, convs + 1):
            name = f"conv{block}_{i}"
            lines.append(f'layer {{ bottom: "{bottom}" top: "{name}" name: "{name}" type: "Convolution" '
                         f'convolution_param {{ num_output: {width} pad: 1 kernel_size: 3 }} }}')
            lines.append(f'layer {{ bottom: "{name}" top: "{name}" name: "relu{block}_{i}" type: "ReLU" }}')
            bottom = name
        lines.append(f'layer {{ bottom: "{bottom}" top: "pool{block}" name: "pool{block}" type: "Pooling" '
                     f'pooling_param {{ pool: MAX kernel_size: 2 stride: 2 }} }}')
        bottom = f"pool{block}"
    for name, width in (("fc6", 4096), ("fc7", 4096), ("fc8", 1000)):
        lines.append(f'layer {{ bottom: "{bottom}" top: "{name}" name: "{name}" type: "InnerProduct" '
                     f'inner_product_param {{ num_output: {width} }} }}')
        if name != "fc8":
            n = name[2:]
            lines.append(f'layer {{ bottom: "{name}" top: "{name}" name: "relu{n}" type: "ReLU" }}')
            lines.append(f'layer {{ bottom: "{name}" top: "{name}" name: "drop{n}" type: "Dropout" '
                         f'dropout_param {{ dropout_ratio: 0.5 }} }}')
        bottom = name
    lines.append('layer { bottom: "fc8" top: "prob" name: "prob" type: "Softmax" }')
    return "\n".join(lines) + "\n"


@pytest.mark.slow
def test_vgg16_matches_opencv_caffe_importer(tmp_path):
    cv2 = pytest.importorskip("cv2")
    skimage_data = pytest.importorskip("skimage.data")
    torch.set_num_threads(2)
    (tmp_path / "deploy.prototxt").write_text(vgg16_deploy())
    net = Net(str(tmp_path / "deploy.prototxt"))
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, (w, b) in net.params.items():   # He-style random weights so activations stay O(1)
            fan_in = w[0].numel()
            w.copy_(torch.randn(w.shape, generator=gen) * (2.0 / fan_in) ** 0.5)
            b.copy_(torch.randn(b.shape, generator=gen) * 0.01)
        net.params["fc8"][0].mul_(0.05)   # moderate logits: a non-degenerate softmax
    image = cv2.resize(skimage_data.astronaut()[:, :, ::-1], (224, 224)).astype(np.float32)   # RGB -> BGR
    blob = (image - np.array([103.939, 116.779, 123.68], np.float32)).transpose(2, 0, 1)[None].copy()
    with torch.no_grad():
        ours = net(data=blob)["prob"].numpy()
    net.save_weights(tmp_path / "vgg16.caffemodel")
    reference = cv2.dnn.readNetFromCaffe(str(tmp_path / "deploy.prototxt"), str(tmp_path / "vgg16.caffemodel"))
    if hasattr(reference, "enableWinograd"):
        reference.enableWinograd(False)
    reference.setInput(blob)
    theirs = reference.forward("prob").reshape(ours.shape)
    assert ours.max() < 0.9 and ours.shape == (1, 1000)
    np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-5 * float(theirs.max()))
    assert int(ours.argmax()) == int(theirs.argmax())


def test_time_command(tmp_path):
    from click.testing import CliRunner

    from vggproto.cli import main
    (tmp_path / "net.prototxt").write_text(SMALL % (6, 6))
    result = CliRunner().invoke(main, ["time", str(tmp_path / "net.prototxt"), "--iterations", "2"])
    assert result.exit_code == 0, result.output
    for line in ("Testing for 2 iterations.", "conv1\tforward:", "fc\tbackward:", "Average Forward pass:",
                 "Average Backward pass:", "Total Time:", "*** Benchmark ends ***"):
        assert line in result.output
    bad = CliRunner().invoke(main, ["time", str(tmp_path / "net.prototxt"), "--gpu", "7"])
    assert bad.exit_code == 2 and "--gpu 7: no such CUDA device" in bad.output


def test_v1_deploy_and_legacy_v1_caffemodel_reproduce_caffe():
    """Caffe's own forward of a V1 net whose caffemodel has V1 layers and legacy 4-D dims (1×1×N×K, 1×1×1×N)."""
    from pathlib import Path
    golden = Path(__file__).parent / "data" / "golden" / "upgrade"
    ref = np.load(golden / "v1_small_forward.npz")
    for model in ("v1_small.caffemodel", "v1_small_upgraded.caffemodel"):
        net = Net(str(golden / "v1_small_deploy.prototxt"), str(golden / model))
        net(data=ref["blob:data"])
        for key in ref.files:
            kind, _, name = key.partition(":")
            if kind == "blob":
                np.testing.assert_allclose(net.blobs[name].detach().numpy(), ref[key], rtol=1e-5, atol=1e-5)
            else:
                layer, index = name.split(":")
                np.testing.assert_array_equal(net.params[layer][int(index)].detach().numpy(), ref[key])
