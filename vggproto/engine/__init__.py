"""Inference engines: the same Caffe net run by the interpreter (torch, the reference and the GPU path), by
onnxruntime on vggproto's own verified ONNX export, or by ncnn on vggproto's own ncnn files (the fast CPU paths),
with a split for nets whose tail they cannot hold (:mod:`.engine`; ncnn in :mod:`.ncnn_runner`); the exported
graphs are cached on disk (:mod:`.cache`) and opened by :mod:`.sessions`; the part of a net an engine holds is
found by :mod:`vggproto.net.segments`; the Python API and the commands' hook are :mod:`.api`.

May import: everything up to train/evaluation/convert (it builds on :mod:`vggproto.convert.onnx`).
"""
from vggproto.engine.api import EngineNet, load, wrap
from vggproto.engine.engine import ENGINES, Engine, EngineError

__all__ = ["ENGINES", "Engine", "EngineError", "EngineNet", "load", "wrap"]
