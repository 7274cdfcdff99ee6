"""Every registered layer type either exports to ONNX and matches onnxruntime, or is refused in one line.

For each type, CASES holds minimal one-layer nets (Input layers for the bottoms ``a``, ``b``, ``c`` with the
given shapes, then the layer) and the domain of each input; the net is exported with
:func:`vggproto.convert.onnx.export_onnx`, which checks onnxruntime at two batch sizes where the net allows, and
must match to 1e-5 relative.  REFUSALS lists the types refused before tracing, with a one-line message naming
the layer and its type.  A type registered without an entry fails the sweep, so a new layer cannot silently
break ``convert --to onnx``.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from vggproto.convert.onnx import OnnxExportError, export_onnx
from vggproto.layers.registry import supported_types

pytest.importorskip("onnxruntime")

G = 'weight_filler { type: "gaussian" std: 0.5 } bias_filler { type: "gaussian" std: 0.5 }'
CONV = f"convolution_param {{ num_output: 4 kernel_size: 3 pad: 1 {G} }}"
DW = f"convolution_param {{ num_output: 3 group: 3 kernel_size: 3 pad: 1 {G} }}"
X4 = {"a": (2, 3, 6, 6)}

#: type -> list of (layer text after name/type/bottoms/tops, bottoms -> shape, bottoms -> domain).  Domains:
#: "normal" (default), "positive", "int:K" (integers in [0, K); "int:1" indexes the batch), "mask" (SegNet
#: max-pooling indices into the 2x upsampled plane) — see _feed.
CASES: dict[str, list[tuple[str, dict, dict]]] = {
    "AbsVal": [("", X4, {})],
    "Accuracy": [("", {"a": (2, 5), "b": (2,)}, {"b": "int:5"})],
    "ArgMax": [("argmax_param { top_k: 2 out_max_val: true }", {"a": (2, 6)}, {}),
               ("argmax_param { top_k: 2 axis: 1 }", X4, {})],
    "Axpy": [("", {"a": (2, 3, 1, 1), "b": (2, 3, 4, 4), "c": (2, 3, 4, 4)}, {})],
    "BN": [('param {} param {} bn_param { scale_filler { type: "gaussian" std: 1 } '
            'shift_filler { type: "gaussian" } }', X4, {})],
    "BNLL": [("", X4, {})],
    "BatchNorm": [("batch_norm_param { use_global_stats: true }", X4, {})],
    "BatchReindex": [("", {"a": (2, 3), "b": (2,)}, {"b": "int:1"})],
    "Bias": [("bias_param { filler { type: 'gaussian' } }", X4, {})],
    "ClassBox": [("", {"a": (2, 12), "b": (2,)}, {"b": "int:3"})],
    "Clip": [("clip_param { min: -0.5 max: 0.7 }", X4, {})],
    "Concat": [("concat_param { axis: 1 }", {"a": (2, 3, 4), "b": (2, 2, 4)}, {})],
    "Convolution": [(CONV, X4, {})],
    "ConvolutionDepthwise": [(DW, X4, {})],
    "Crop": [("crop_param { axis: 2 offset: 1 }", {"a": (2, 3, 6, 6), "b": (2, 3, 4, 4)}, {})],
    "Deconvolution": [(f"convolution_param {{ num_output: 2 kernel_size: 3 stride: 2 {G} }}", X4, {})],
    "DepthwiseConvolution": [(DW, X4, {})],
    "Dropout": [("dropout_param { dropout_ratio: 0.3 }", X4, {})],
    "ELU": [("elu_param { alpha: 0.5 }", X4, {})],
    "Eltwise": [("eltwise_param { operation: SUM coeff: 0.5 coeff: -2 }", {"a": (2, 3), "b": (2, 3)}, {}),
                ("eltwise_param { operation: MAX }", {"a": (2, 3), "b": (2, 3)}, {}),
                ("eltwise_param { operation: PROD }", {"a": (2, 3), "b": (2, 3)}, {})],
    "Embed": [(f"embed_param {{ num_output: 4 input_dim: 5 {G} }}", {"a": (2, 3)}, {"a": "int:5"})],
    "Exp": [("exp_param { base: 2 scale: 0.5 shift: 0.1 }", X4, {}), ("", X4, {})],
    "Filter": [("", {"a": (2, 3), "b": (2,)}, {"b": "int:2"})],
    "Flatten": [("flatten_param { axis: 2 }", X4, {})],
    "Im2col": [("convolution_param { kernel_size: 2 stride: 2 }", X4, {})],
    "InnerProduct": [(f"inner_product_param {{ num_output: 4 {G} }}", X4, {})],
    "Input": [("input_param { shape { dim: 2 dim: 3 } }", {}, {})],   # a second Input reads it (AFTER)
    "Interp": [("interp_param { height: 5 width: 7 }", X4, {}), ("interp_param { zoom_factor: 2 }", X4, {})],
    "LRN": [("lrn_param { local_size: 3 alpha: 0.5 beta: 0.75 }", X4, {}),
            ("lrn_param { local_size: 3 alpha: 0.5 norm_region: WITHIN_CHANNEL }", X4, {})],
    "LSTM": [(f"recurrent_param {{ num_output: 3 {G} }}", {"a": (3, 2, 4), "b": (3, 2)}, {"b": "int:2"})],
    "LSTMUnit": [("", {"a": (1, 2, 3), "b": (1, 2, 12), "c": (1, 2)}, {"c": "int:2"})],
    "Log": [("log_param { base: 2 scale: 1.5 shift: 0.1 }", X4, {"a": "positive"}), ("", X4, {"a": "positive"}),
            ("log_param { shift: 0.5 }", X4, {})],   # NaN below −0.5 in both: must still match
    "MVN": [("", X4, {}), ("mvn_param { across_channels: true normalize_variance: false }", X4, {})],
    "MemoryData": [("memory_data_param { batch_size: 2 channels: 3 height: 4 width: 4 }", {}, {})],
    "Mish": [("", X4, {})],
    "Normalize": [("norm_param { across_spatial: false channel_shared: false }", X4, {})],
    "PReLU": [("", X4, {})],
    "Parameter": [("parameter_param { shape { dim: 2 dim: 3 } }", {}, {})],
    "Permute": [("permute_param { order: 0 order: 2 order: 3 order: 1 }", X4, {})],
    "Pooling": [("pooling_param { pool: MAX kernel_size: 3 stride: 2 }", X4, {}),
                ("pooling_param { pool: AVE kernel_size: 3 stride: 2 pad: 1 }", X4, {}),
                ("pooling_param { pool: AVE global_pooling: true }", X4, {}),
                ("pooling_param { pool: STOCHASTIC kernel_size: 2 stride: 2 }", X4, {"a": "positive"})],
    "Power": [("power_param { power: 0.5 scale: 2 shift: 0.5 }", X4, {"a": "positive"}),
              ("power_param { power: 2 scale: -1 shift: 0.5 }", X4, {})],
    "PriorBox": [("prior_box_param { min_size: 4 max_size: 6 aspect_ratio: 2 flip: true variance: 0.1 }",
                  {"a": (2, 3, 2, 2), "b": (2, 3, 8, 8)}, {})],
    "RNN": [(f"recurrent_param {{ num_output: 3 {G} }}", {"a": (3, 2, 4), "b": (3, 2)}, {"b": "int:2"})],
    "ReLU": [("relu_param { negative_slope: 0.1 }", X4, {}), ("", X4, {})],
    "ReLU6": [("", X4, {})],
    "Reduction": [("reduction_param { operation: SUMSQ axis: 1 }", X4, {}),
                  ("reduction_param { operation: ASUM axis: 2 coeff: 0.5 }", X4, {}),
                  ("reduction_param { operation: MEAN axis: 1 }", X4, {})],
    "Reshape": [("reshape_param { shape { dim: 0 dim: -1 } }", X4, {})],
    "SPP": [("spp_param { pyramid_height: 2 }", X4, {}), ("spp_param { pyramid_height: 2 pool: AVE }", X4, {})],
    "Scale": [("scale_param { bias_term: true filler { type: 'gaussian' } bias_filler { type: 'gaussian' } }",
               X4, {}), ("scale_param { axis: 0 }", {"a": (2, 3, 4), "b": (2, 3)}, {})],
    "ShuffleChannel": [("shuffle_channel_param { group: 3 }", {"a": (2, 6, 2, 2)}, {})],
    "Sigmoid": [("", X4, {})],
    "Silence": [("", {"a": (2, 3), "b": (2, 2)}, {})],
    "Slice": [("slice_param { axis: 1 slice_point: 1 }", X4, {})],
    "Softmax": [("", X4, {}), ("softmax_param { axis: 2 }", X4, {})],
    "Split": [("", X4, {})],
    "Swish": [("swish_param { beta: 1.5 }", X4, {})],
    "TanH": [("", X4, {})],
    "Threshold": [("threshold_param { threshold: 0.2 }", X4, {})],
    "Tile": [("tile_param { axis: 1 tiles: 2 }", X4, {})],
    "Upsample": [("upsample_param { scale: 2 }", {"a": (2, 3, 3, 3), "b": (2, 3, 3, 3)}, {"b": "mask"})],
}

#: Types refused before tracing, and a word of the reason the one-line message must give.
REFUSALS: dict[str, str] = {
    "BoxData": "data layer",
    "ContrastiveLoss": "loss layer",
    "Data": "data layer",
    "DetectionOutput": "NMS",
    "DummyData": "data layer",
    "EuclideanLoss": "loss layer",
    "HDF5Data": "data layer",
    "HDF5Output": "side effect",
    "HingeLoss": "loss layer",
    "ImageData": "data layer",
    "InfogainLoss": "loss layer",
    "MultinomialLogisticLoss": "loss layer",
    "Proposal": "NMS",
    "Python": "arbitrary code",
    "ROIPooling": "ROI values",
    "SigmoidCrossEntropyLoss": "loss layer",
    "SmoothL1Loss": "loss layer",
    "SoftmaxWithLoss": "loss layer",
}

#: The layer's tops, when it has not exactly one top "t".
TOPS = {"Slice": ["t", "t2"], "Split": ["t", "t2"], "Silence": [], "Input": ["t"], "Parameter": ["t"],
        "MemoryData": ["t", "t2"], "LSTMUnit": ["t", "t2"]}
#: Bottoms the layer uses, when not all of its inputs (the rest become net outputs).
BOTTOMS = {"Silence": ["a"]}
#: Layers after the one under test, for types whose tops would otherwise be outputs that are inputs.
AFTER = {"Input": 'layer { name: "abs" type: "AbsVal" bottom: "t" top: "u" }',
         "MemoryData": 'layer { name: "abs" type: "AbsVal" bottom: "t" top: "u" }',
         "Silence": 'layer { name: "abs" type: "AbsVal" bottom: "b" top: "u" }'}


def _feed(domains: dict, shapes: dict):
    """A :data:`vggproto.convert.onnx.Feed` giving each input values in its layer's domain."""
    def feed(name: str, shape: list[int], seed: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(seed * 31 + sum(map(ord, name)))
        kind = domains.get(name, "normal")
        if kind == "positive":
            return torch.rand(shape, generator=g) * 2 + 0.1
        if kind.startswith("int:"):
            top = int(kind[4:]) if kind != "int:1" else shape[0]   # "int:1": an index into the batch
            return torch.randint(0, max(top, 1), shape, generator=g).float()
        if kind == "mask":   # distinct argmax positions in the 6 x 6 upsampled plane: one per 2 x 2 block
            rows, cols = torch.meshgrid(torch.arange(shape[2]), torch.arange(shape[3]), indexing="ij")
            pick = torch.randint(0, 2, (2, *shape), generator=g)
            return (((2 * rows + pick[0]) * 2 * shape[3]) + 2 * cols + pick[1]).float()
        return torch.randn(shape, generator=g)
    return feed


def _net(kind: str, text: str | None, shapes: dict) -> str:
    lines = []
    for name, shape in shapes.items():
        dims = " ".join(f"dim: {d}" for d in shape)
        lines.append(f'layer {{ name: "in_{name}" type: "Input" top: "{name}" input_param {{ shape {{ {dims} }} }} }}')
    if kind == "Parameter":   # a net needs an input to feed; Parameter's top is a learned constant
        lines.append('layer { name: "in_z" type: "Input" top: "z" input_param { shape { dim: 2 dim: 3 } } }')
        lines.append('layer { name: "abs" type: "AbsVal" bottom: "z" top: "u" }')
    bottoms = "".join(f' bottom: "{b}"' for b in BOTTOMS.get(kind, shapes))
    tops = "".join(f' top: "{t}"' for t in TOPS.get(kind, ["t"]))
    lines.append(f'layer {{ name: "l" type: "{kind}"{bottoms}{tops} {text} }}')
    return "\n".join(lines + [AFTER.get(kind, "")]) + "\n"


def test_every_registered_type_has_a_case() -> None:
    covered = set(CASES) | set(REFUSALS)
    missing = sorted(set(supported_types()) - covered)
    assert not missing, f"add ONNX sweep cases (or an expected refusal) for {', '.join(missing)}"
    assert not covered - set(supported_types()) and not set(CASES) & set(REFUSALS)


@pytest.mark.parametrize("kind,index", [(k, i) for k in sorted(CASES) for i in range(len(CASES[k]))])
def test_layer_exports_and_matches_onnxruntime(kind: str, index: int, tmp_path: Path) -> None:
    text, shapes, domains = CASES[kind][index]
    check = export_onnx(_net(kind, text, shapes), None, tmp_path / "l.onnx", feed=_feed(domains, shapes))
    worst = max(d for per_batch in check.differences.values() for d in per_batch.values())
    assert worst <= 1e-5, check.differences
    assert (tmp_path / "l.onnx").exists()


@pytest.mark.parametrize("kind", sorted(REFUSALS))
def test_layer_is_refused_before_tracing_in_one_line(kind: str, tmp_path: Path, monkeypatch, capfd) -> None:
    def no_tracing(*args, **kwargs):
        raise AssertionError("traced a refused net")
    monkeypatch.setattr(torch.onnx, "export", no_tracing)
    with pytest.raises(OnnxExportError) as info:
        export_onnx(_net(kind, "", {"a": (2, 3)}), None, tmp_path / "l.onnx")
    message = str(info.value)
    assert "\n" not in message and f"layer 'l' ({kind})" in message and REFUSALS[kind] in message, message
    assert not (tmp_path / "l.onnx").exists()
    assert capfd.readouterr() == ("", "")


def _cli_files(tmp_path: Path, layer: str) -> tuple[Path, Path]:
    """A prototxt (Input -> Convolution -> ``layer``) and a caffemodel of its weights, for the CLI."""
    from vggproto.net.interpreter import Net
    text = ('layer { name: "in" type: "Input" top: "a" input_param { shape { dim: 1 dim: 3 dim: 6 dim: 6 } } }\n'
            f'layer {{ name: "c" type: "Convolution" bottom: "a" top: "c" {CONV} }}\n')
    Net(text, seed=1).save_weights(tmp_path / "w.caffemodel")
    model = tmp_path / "net.prototxt"
    model.write_text(text + layer + "\n")
    return model, tmp_path / "w.caffemodel"


@pytest.mark.parametrize("layer,words", [
    ('layer { name: "loss" type: "SoftmaxWithLoss" bottom: "c" bottom: "a" top: "l" }', "'loss' (SoftmaxWithLoss)"),
    ('layer { name: "e" type: "ELU" bottom: "c" top: "e" }', "torch.onnx.export failed"),
])
def test_a_failing_cli_export_prints_one_line(layer: str, words: str, tmp_path: Path, capfd, monkeypatch) -> None:
    from click.testing import CliRunner

    from vggproto.cli import main
    from vggproto.layers.neuron import ELU
    model, weights = _cli_files(tmp_path, layer)
    # the pre-fix ELU (expm1, which no opset has) stands for any layer the exporter cannot express
    monkeypatch.setattr(ELU, "apply", lambda self, x: torch.where(x > 0, x, torch.expm1(x.clamp(max=0))))
    capfd.readouterr()
    result = CliRunner().invoke(main, ["convert", str(weights), str(tmp_path / "o.onnx"), "--model", str(model)])
    captured = capfd.readouterr()
    assert result.exit_code != 0 and not (tmp_path / "o.onnx").exists()
    assert len(result.output.strip().splitlines()) == 1 and words in result.output, result.output
    assert captured.out == "" and captured.err == "", captured


def test_global_average_pooling_exports_caffes_mean(tmp_path: Path) -> None:
    """The bug this sweep was written for: AVE pooling came out divided twice (a 6x6 mean 36 times too small)."""
    import onnxruntime
    text = ('layer { name: "in" type: "Input" top: "a" input_param { shape { dim: 1 dim: 2 dim: 6 dim: 6 } } }\n'
            'layer { name: "p" type: "Pooling" bottom: "a" top: "p" '
            'pooling_param { pool: AVE global_pooling: true } }\n')
    export_onnx(text, None, tmp_path / "g.onnx")
    x = np.random.default_rng(0).random((3, 2, 6, 6), dtype=np.float32)
    session = onnxruntime.InferenceSession(str(tmp_path / "g.onnx"), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(session.run(["p"], {"a": x})[0], x.mean(axis=(2, 3), keepdims=True), rtol=1e-6)
