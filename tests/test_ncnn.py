"""vggproto.convert.ncnn and the ncnn engine: every layer pattern it writes, run in ncnn at batch 1 and 3 and at
another height × width, against the interpreter (the whole net must run in ncnn, so that a pattern cannot pass
by falling back); refusals, the split, the files ``vggproto convert`` writes, and ``auto``'s race."""
from __future__ import annotations

import logging

import ncnn
import numpy as np
import pytest
import torch
from click.testing import CliRunner

from vggproto.cli import main
from vggproto.convert.ncnn import refusal
from vggproto.convert.onnx import difference
from vggproto.engine import EngineError, load
from vggproto.net.interpreter import Net

HEAD = 'name: "t"\nlayer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 4 dim: 12 ' \
       'dim: 12 } } }\n'
CONV = ('layer { name: "c" type: "Convolution" bottom: "data" top: "c" convolution_param { num_output: 6 '
        'kernel_size: 3 pad: 1 weight_filler { type: "msra" } bias_filler { type: "gaussian" std: 0.5 } } }\n')
SHAPES = ((1, 4, 12, 12), (3, 4, 12, 12), (2, 4, 17, 15))


def _run(body: str, shapes=SHAPES, outputs=None) -> object:
    """The net HEAD + body on the ncnn engine at every shape, against the interpreter; the engine."""
    engine = load(HEAD + body, None, "ncnn", cache=False, threads=1)
    assert engine.ncnn.segment.end == len(engine.net.layer_list), "part of the net ran outside ncnn"
    rng = np.random.default_rng(0)
    for shape in shapes:
        x = rng.standard_normal(shape).astype(np.float32)
        got = engine.forward(data=x)
        with torch.inference_mode():
            want = engine.net.forward(data=torch.from_numpy(x))
        for name in outputs or engine.net.output_names:
            assert got[name].shape == tuple(want[name].shape)
            assert difference(want[name].numpy(), got[name]) <= 1e-5, (name, shape)
    assert engine.kind == "ncnn"
    return engine


@pytest.mark.parametrize("conv", [
    "kernel_size: 3 pad: 1", "kernel_size: 3 stride: 2", "kernel_size: 3 pad: 2 dilation: 2",
    "kernel_h: 3 kernel_w: 1 pad_h: 1 pad_w: 0 stride_h: 1 stride_w: 2", "kernel_size: 1 bias_term: false",
    "kernel_size: 3 pad: 1 group: 2", "kernel_size: 3 pad: 1 group: 4",
])
def test_convolution(conv):
    outputs = 4 if "group: 4" in conv else 6
    _run(f'layer {{ name: "c" type: "Convolution" bottom: "data" top: "c" convolution_param {{ num_output: {outputs} '
         f'{conv} weight_filler {{ type: "msra" }} bias_filler {{ type: "gaussian" std: 0.5 }} }} }}\n')


@pytest.mark.parametrize("slope", [0, 0.1])
def test_convolution_with_relu_is_fused_and_still_exact(slope):
    engine = _run(CONV + f'layer {{ name: "r" type: "ReLU" bottom: "c" top: "c" relu_param {{ negative_slope: '
                         f'{slope} }} }}\n')
    assert engine.ncnn.net.layers()[-1].type == "Convolution" and len(engine.ncnn.net.layers()) == 2


def test_relu_not_fused_where_the_pre_activation_is_read():
    body = CONV + ('layer { name: "r" type: "ReLU" bottom: "c" top: "r" }\n'
                   'layer { name: "e" type: "Eltwise" bottom: "c" bottom: "r" top: "e" '
                   'eltwise_param { operation: SUM coeff: 1 coeff: -2 } }\n')
    _run(body)


@pytest.mark.parametrize("pool", [
    "pool: MAX kernel_size: 3 stride: 2", "pool: MAX kernel_size: 2 stride: 2", "pool: AVE kernel_size: 3 stride: 2",
    "pool: MAX kernel_size: 3 stride: 2 pad: 1",
    "pool: AVE kernel_size: 3 stride: 1 pad: 1", "pool: MAX kernel_size: 3 stride: 2 round_mode: FLOOR",
    "pool: AVE kernel_size: 3 stride: 2 round_mode: FLOOR", "pool: MAX global_pooling: true",
    "pool: AVE global_pooling: true",
])
def test_pooling(pool):
    _run(CONV + f'layer {{ name: "p" type: "Pooling" bottom: "c" top: "p" pooling_param {{ {pool} }} }}\n')


def test_global_pooling_keeps_three_axes_for_a_convolution_after_it():
    """Squeeze-and-excitation's pattern: ncnn's global pooling gives a vector, the writer reshapes it to C×1×1."""
    engine = _run(CONV + 'layer { name: "p" type: "Pooling" bottom: "c" top: "p" pooling_param { pool: AVE '
                         'global_pooling: true } }\nlayer { name: "fc" type: "Convolution" bottom: "p" top: "fc" '
                         'convolution_param { num_output: 3 kernel_size: 1 weight_filler { type: "msra" } } }\n'
                         'layer { name: "s" type: "Softmax" bottom: "fc" top: "s" }\n')
    assert [layer.type for layer in engine.ncnn.net.layers()][-4:] == ["Pooling", "Reshape", "Convolution",
                                                                       "Softmax"]


@pytest.mark.parametrize("ip", ["", "bias_term: false", "transpose: true"])
def test_inner_product_on_images_and_vectors_then_softmax(ip):
    body = CONV + (f'layer {{ name: "fc" type: "InnerProduct" bottom: "c" top: "fc" inner_product_param {{ '
                   f'num_output: 7 {ip} weight_filler {{ type: "gaussian" std: 0.1 }} bias_filler {{ type: '
                   f'"gaussian" std: 0.1 }} }} }}\n'
                   'layer { name: "fc2" type: "InnerProduct" bottom: "fc" top: "fc2" inner_product_param { '
                   'num_output: 5 weight_filler { type: "gaussian" std: 0.5 } } }\n'
                   'layer { name: "prob" type: "Softmax" bottom: "fc2" top: "prob" }\n')
    _run(body, shapes=((1, 4, 12, 12), (3, 4, 12, 12)))


@pytest.mark.parametrize("body", [
    'layer { name: "s" type: "Softmax" bottom: "c" top: "s" }\n',
    'layer { name: "n" type: "LRN" bottom: "c" top: "n" lrn_param { local_size: 5 alpha: 0.5 beta: 0.75 k: 2 } }\n',
    'layer { name: "n" type: "LRN" bottom: "c" top: "n" lrn_param { local_size: 3 alpha: 0.5 beta: 0.75 '
    'norm_region: WITHIN_CHANNEL } }\n',
    'layer { name: "d" type: "Dropout" bottom: "c" top: "c" dropout_param { dropout_ratio: 0.3 } }\n',
    'layer { name: "d" type: "Dropout" bottom: "c" top: "c" dropout_param { dropout_ratio: 0.3 scale_train: false } '
    '}\n',
    'layer { name: "x" type: "Sigmoid" bottom: "c" top: "x" }\n',
    'layer { name: "x" type: "TanH" bottom: "c" top: "x" }\n',
    'layer { name: "x" type: "AbsVal" bottom: "c" top: "x" }\n',
    'layer { name: "x" type: "BNLL" bottom: "c" top: "x" }\n',
    'layer { name: "x" type: "ELU" bottom: "c" top: "x" elu_param { alpha: 0.5 } }\n',
    'layer { name: "x" type: "AbsVal" bottom: "c" top: "a" }\nlayer { name: "y" type: "Power" bottom: "a" top: "y" '
    'power_param { power: 1.5 scale: 0.5 shift: 0.25 } }\n',
    'layer { name: "x" type: "PReLU" bottom: "c" top: "x" prelu_param { filler { type: "gaussian" std: 0.3 } } }\n',
    'layer { name: "x" type: "PReLU" bottom: "c" top: "x" prelu_param { channel_shared: true } }\n',
    'layer { name: "x" type: "Flatten" bottom: "c" top: "x" }\n',
])
def test_elementwise_and_channel_layers(body):
    _run(CONV + body)


@pytest.mark.parametrize("factor", [1.0, 4.0, 0.0])
def test_batch_norm_and_scale(factor):
    engine = load(HEAD + CONV + 'layer { name: "bn" type: "BatchNorm" bottom: "c" top: "c" batch_norm_param { eps: '
                  '0.001 } }\nlayer { name: "sc" type: "Scale" bottom: "c" top: "c" scale_param { bias_term: true } '
                  '}\n', None, "torch")
    rng = np.random.default_rng(1)
    bn, sc = engine.net.layer_dict["bn"], engine.net.layer_dict["sc"]
    with torch.no_grad():
        bn.blobs[0].copy_(torch.from_numpy(rng.normal(0, 1, 6).astype(np.float32)))
        bn.blobs[1].copy_(torch.from_numpy(rng.uniform(0.5, 2, 6).astype(np.float32)))
        bn.blobs[2].fill_(factor)
        sc.blobs[0].copy_(torch.from_numpy(rng.normal(1, 0.3, 6).astype(np.float32)))
        sc.blobs[1].copy_(torch.from_numpy(rng.normal(0, 0.3, 6).astype(np.float32)))
    from vggproto.engine import Engine
    fast = Engine(engine.net, "ncnn", cache=False, threads=1)
    x = rng.standard_normal((3, 4, 12, 12)).astype(np.float32)
    with torch.inference_mode():
        want = engine.net.forward(data=torch.from_numpy(x))["c"].numpy()
    assert difference(want, fast.forward(data=x)["c"]) <= 1e-5 and fast.kind == "ncnn"


@pytest.mark.parametrize("operation", ["SUM", "PROD", "MAX", "SUM coeff: 0.5 coeff: -1.5"])
def test_shared_blobs_eltwise_and_concat(operation):
    body = CONV + ('layer { name: "c2" type: "Convolution" bottom: "c" top: "c2" convolution_param { num_output: 6 '
                   'kernel_size: 1 weight_filler { type: "msra" } } }\n'
                   f'layer {{ name: "e" type: "Eltwise" bottom: "c" bottom: "c2" top: "e" eltwise_param {{ operation: '
                   f'{operation} }} }}\n'
                   'layer { name: "cat" type: "Concat" bottom: "c" bottom: "e" bottom: "c2" top: "cat" }\n')
    engine = _run(body, outputs=["cat"])
    assert any(layer.type == "Split" for layer in engine.ncnn.net.layers())   # c and c2 are read twice


def test_a_blob_the_caller_keeps_is_given_back_before_the_relu_that_rewrites_it_in_place():
    engine = load(HEAD + CONV + 'layer { name: "r" type: "ReLU" bottom: "c" top: "c" }\nlayer { name: "p" '
                  'type: "Pooling" bottom: "c" top: "p" pooling_param { pool: MAX kernel_size: 2 stride: 2 } }\n',
                  None, "ncnn", cache=False, keep=("c",))
    x = np.random.default_rng(2).standard_normal((2, 4, 12, 12)).astype(np.float32)
    engine.run(data=torch.from_numpy(x))
    assert float(engine.blobs["c"].min()) >= 0 and tuple(engine.blobs["c"].shape) == (2, 6, 12, 12)


@pytest.mark.parametrize("body, reason", [
    ('layer { name: "s" type: "Softmax" bottom: "c" top: "s" softmax_param { axis: 2 } }\n', "not the channel axis"),
    ('layer { name: "cat" type: "Concat" bottom: "c" bottom: "c" top: "cat" concat_param { axis: 0 } }\n',
     "not the channel axis"),
    ('layer { name: "d" type: "Deconvolution" bottom: "c" top: "d" convolution_param { num_output: 2 kernel_size: 2 '
     'stride: 2 } }\n', "ncnn has no Deconvolution layer written by vggproto"),
    ('layer { name: "a" type: "AbsVal" bottom: "c" top: "c" }\nlayer { name: "p" type: "Pooling" bottom: "c" '
     'top: "p" pooling_param { pool: STOCHASTIC kernel_size: 2 } }\n', "only MAX and AVE pooling"),
    ('layer { name: "p" type: "Pooling" bottom: "c" top: "p" pooling_param { pool: AVE kernel_size: 3 stride: 2 pad: 1 '
     '} }\n', "AVE pooling with padding and a stride above 1"),
])
def test_refusals_name_the_reason_and_the_rest_runs_in_the_interpreter(body, reason):
    net = Net(HEAD + CONV + body, phase="TEST")
    last = len(net.layer_list) - 1
    assert reason in refusal(net, last)
    engine = load(HEAD + CONV + body, None, "ncnn", cache=False)
    assert engine.ncnn.segment.end == last                   # the rest in ncnn, the refused layer after it in torch
    x = np.random.default_rng(3).standard_normal((2, 4, 12, 12)).astype(np.float32)
    got = engine.forward(data=x)
    with torch.inference_mode():
        want = net.forward(data=torch.from_numpy(x))
    name = net.output_names[0]
    assert difference(want[name].numpy(), got[name]) <= 1e-5


def test_engine_ncnn_runs_on_the_cpu_only():
    with pytest.raises(EngineError, match="^--engine ncnn runs on the CPU"):
        load(HEAD + CONV, None, "ncnn", device="meta")


def test_convert_writes_ncnn_files_that_ncnn_runs(tmp_path):
    model = tmp_path / "m.prototxt"
    model.write_text(HEAD + CONV + 'layer { name: "r" type: "ReLU" bottom: "c" top: "c" }\n'
                     'layer { name: "p" type: "Pooling" bottom: "c" top: "p" pooling_param { pool: AVE '
                     'global_pooling: true } }\nlayer { name: "s" type: "Softmax" bottom: "p" top: "s" }\n')
    net = Net(str(model), phase="TEST")
    weights = tmp_path / "m.caffemodel"
    from vggproto.weights.caffemodel import write_weights
    write_weights(str(weights), {n: [b.detach().numpy() for b in bl] for n, bl in net.params.items()}, net.net_param)
    result = CliRunner().invoke(main, ["convert", str(weights), str(tmp_path / "out.param"), "--model", str(model)])
    assert result.exit_code == 0, result.output
    runner = ncnn.Net()
    runner.opt.use_fp16_storage = runner.opt.use_fp16_packed = runner.opt.use_fp16_arithmetic = False
    runner.opt.use_bf16_storage = False
    assert runner.load_param(str(tmp_path / "out.param")) == 0 and runner.load_model(str(tmp_path / "out.bin")) == 0
    x = np.random.default_rng(4).standard_normal((4, 12, 12)).astype(np.float32)
    extractor = runner.create_extractor()
    extractor.input("data", ncnn.Mat(x))
    status, mat = extractor.extract("s")
    with torch.inference_mode():
        want = net.forward(data=torch.from_numpy(x[None]))["s"].numpy()
    assert status == 0 and difference(want.reshape(-1), np.array(mat).reshape(-1)) <= 1e-5
    bad = tmp_path / "bad.prototxt"
    bad.write_text(HEAD + CONV + 'layer { name: "d" type: "Softmax" bottom: "c" top: "d" softmax_param { axis: 2 } '
                   '}\n')
    refused = CliRunner().invoke(main, ["convert", str(weights), str(tmp_path / "bad.param"), "--model", str(bad)])
    assert refused.exit_code == 1 and not (tmp_path / "bad.param").exists()
    assert refused.output.strip().splitlines()[-1].startswith("vggproto: error: ")
    assert "layer 'd' (Softmax): cannot be written for ncnn: softmax_param.axis 2 is not the channel axis" in \
        refused.output


def test_auto_races_the_engines_once_and_keeps_only_the_winner(caplog):
    body = CONV + 'layer { name: "r" type: "ReLU" bottom: "c" top: "c" }\n'
    with caplog.at_level(logging.INFO, logger="vggproto.engine"):
        engine = load(HEAD + body, None, "auto", cache=False)
        x = np.random.default_rng(5).standard_normal((2, 4, 12, 12)).astype(np.float32)
        first = engine.forward(data=x)
        second = engine.forward(data=x[:1])
    races = [r.getMessage() for r in caplog.records if "at inputs" in r.getMessage()]
    assert len(races) == 1 and "ncnn" in races[0] and "onnxruntime" in races[0]
    assert engine.kind in ("ncnn", "onnxruntime") and engine.kind in races[0].split(" at inputs")[0]
    assert (engine.ncnn is None) != (engine.segment is None)   # the loser is gone
    np.testing.assert_allclose(first["c"][:1], second["c"], rtol=1e-5, atol=1e-6)
