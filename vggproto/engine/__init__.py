"""Inference engines: the same Caffe net run by the interpreter (torch, the reference and the GPU path) or by
onnxruntime on vggproto's own verified ONNX export (the fast CPU path), with a split for nets whose tail ONNX
cannot hold (:mod:`.engine`); the exported graphs are cached on disk (:mod:`.cache`); the part of a net that
exports is found by :mod:`.split`.

May import: everything up to train/evaluation/convert (it builds on :mod:`vggproto.convert.onnx`).
"""
from vggproto.engine.engine import ENGINES, Engine, EngineError, EngineNet, load, wrap

__all__ = ["ENGINES", "Engine", "EngineError", "EngineNet", "load", "wrap"]
