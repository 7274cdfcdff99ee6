"""Speed options for the interpreter (inference): Winograd 3×3 convolutions, channels_last, autocast, compile.

``optimize_for_inference(net, ...)`` is the entry point; :mod:`vggproto.fast.winograd` holds the transforms and
:mod:`vggproto.fast.bench` times the result (``vggproto time-inference``).
"""
from vggproto.fast.optimize import FastOptions, InferenceNet, install_fast_paths, optimize_for_inference
from vggproto.fast.winograd import transform_weights, winograd_conv2d, winograd_matrices

__all__ = ["FastOptions", "InferenceNet", "install_fast_paths", "optimize_for_inference", "transform_weights",
           "winograd_conv2d", "winograd_matrices"]
