"""``vggproto time-inference``: forward-only timing with the speed options (vggproto.commands.fast)."""
from __future__ import annotations

from click.testing import CliRunner

from vggproto.cli import main

NET = """name: "wide"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 128 dim: 12 dim: 12 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  convolution_param { num_output: 8 kernel_size: 3 pad: 1 weight_filler { type: "msra" } } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "conv2" type: "Convolution" bottom: "conv1" top: "conv2"
  convolution_param { num_output: 4 kernel_size: 3 stride: 2 weight_filler { type: "msra" } } }
"""


def test_time_inference_reports_winograd_layers_and_throughput(tmp_path):
    path = tmp_path / "net.prototxt"
    path.write_text(NET)
    result = CliRunner().invoke(main, ["time-inference", str(path), "--batch", "4", "--iterations", "2",
                                       "--engine", "torch"])
    assert result.exit_code == 0, result.output
    assert "Winograd layers: conv1\n" in result.output        # 128 input channels; conv2 is strided
    assert "batch 4" in result.output and "img/s" in result.output
    result = CliRunner().invoke(main, ["time-inference", str(path), "--no-winograd", "--channels-last",
                                       "--autocast", "bf16", "--iterations", "1"])
    assert result.exit_code == 0, result.output
    assert "Winograd layers: none" in result.output


def test_time_inference_errors(tmp_path):
    path = tmp_path / "net.prototxt"
    path.write_text(NET)
    bad = CliRunner().invoke(main, ["time-inference", str(path), "--gpu", "7"])
    assert bad.exit_code == 2 and "--gpu 7: no such CUDA device" in bad.output
    noinput = tmp_path / "noinput.prototxt"
    noinput.write_text('name: "x"\nlayer { name: "d" type: "DummyData" top: "d" dummy_data_param { shape { dim: 1 '
                       'dim: 2 } } }\n')
    bad = CliRunner().invoke(main, ["time-inference", str(noinput)])
    assert bad.exit_code == 1 and "no Input/MemoryData layer" in bad.output
