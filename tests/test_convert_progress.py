"""``vggproto convert`` progress: per-layer lines in a log for large sources, nothing for small ones, same bytes.

The size threshold is patched to 0 so that a small official-like VGG-16 (16 layers with weights) counts as large;
under pytest stderr is not a terminal, so :class:`~vggproto.data.progress.Progress` logs lines (no bar).
"""
from __future__ import annotations

import hashlib
import io
import logging
import re
import sys
from pathlib import Path

import pytest

from vggproto.convert import convert as convert_module
from vggproto.convert.convert import convert
from vggproto.weights.official_like import write_official_like

FORMATS = ("caffemodel", "h5", "pt", "safetensors", "torchvision")
SUFFIX = {"caffemodel": ".caffemodel", "h5": ".h5", "pt": ".pt", "safetensors": ".safetensors",
          "torchvision": ".pth"}
LINE = re.compile(r"^convert: (\d+)/16 layers, \d+\.\d layers/s, ETA \d+:\d\d:\d\d$")


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("progress") / "vgg16_small.caffemodel"
    write_official_like(path, 16, seed=7, width_divisor=8)
    return path


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _progress_lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "vggproto.progress"]


@pytest.mark.parametrize("fmt", FORMATS)
def test_large_conversion_logs_periodic_layer_lines_and_writes_the_same_bytes(fmt, source, tmp_path, caplog,
                                                                              monkeypatch):
    caplog.set_level(logging.INFO, logger="vggproto")
    plain = tmp_path / f"plain{SUFFIX[fmt]}"
    convert(source, plain, to=fmt)
    assert not _progress_lines(caplog)                       # 6 MB source: under the threshold, no progress
    monkeypatch.setattr(convert_module, "PROGRESS_MIN_BYTES", 0)
    caplog.clear()
    counted = tmp_path / f"counted{SUFFIX[fmt]}"
    convert(source, counted, to=fmt)
    lines = _progress_lines(caplog)
    counts = [int(LINE.match(line).group(1)) for line in lines if LINE.match(line)]
    assert len(counts) == len(lines), lines
    assert counts == [2, 4, 6, 8, 10, 12, 14, 16]            # every ceil(16 / 10) = 2 layers, the last one once
    assert lines[-1].startswith("convert: 16/16 layers")
    assert "\r" not in caplog.text
    assert _sha256(counted) == _sha256(plain)


def test_writers_call_back_once_per_layer_in_order(source, tmp_path):
    """Each writer names every layer exactly once (torch.save's is counted from the bytes it writes)."""
    from vggproto.convert.convert import load_caffe_weights
    from vggproto.weights.caffemodel import write_weights
    from vggproto.weights.hdf5 import write_hdf5_weights
    from vggproto.weights.torch_files import save_safetensors, save_torch_state, weights_to_state_dict
    weights = load_caffe_weights(source)[0]
    state = weights_to_state_dict(weights)
    seen: dict[str, list[str]] = {name: [] for name in ("caffemodel", "h5", "pt", "safetensors")}
    write_weights(tmp_path / "w.caffemodel", weights, on_layer=seen["caffemodel"].append)
    write_hdf5_weights(tmp_path / "w.h5", weights, list(weights), on_layer=seen["h5"].append)
    save_torch_state(tmp_path / "w.pt", state, on_layer=seen["pt"].append)
    save_safetensors(tmp_path / "w.safetensors", state, on_layer=seen["safetensors"].append)
    assert all(names == list(weights) for names in seen.values()), seen


def test_quiet_silences_progress(source, tmp_path, caplog, monkeypatch):
    monkeypatch.setattr(convert_module, "PROGRESS_MIN_BYTES", 0)
    caplog.set_level(logging.WARNING, logger="vggproto")     # what `vggproto -q` sets
    convert(source, tmp_path / "q.pt")
    assert not _progress_lines(caplog)


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_terminal_gets_a_bar_and_no_lines(source, tmp_path, caplog, monkeypatch):
    monkeypatch.setattr(convert_module, "PROGRESS_MIN_BYTES", 0)
    caplog.set_level(logging.INFO, logger="vggproto")
    terminal = _Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    convert(source, tmp_path / "bar.safetensors")
    assert not _progress_lines(caplog)
    assert "16/16" in terminal.getvalue() and "layer" in terminal.getvalue()
