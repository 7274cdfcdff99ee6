"""The evaluation commands as single library calls: load the nets, run, write the output file.

``vggproto evaluate`` and ``vggproto extract`` call these and only print what they return, so a script gets the
same runs (checks, fusion, output files) without the command line.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from vggproto.errors import VGGProtoError
from vggproto.evaluation.evaluate import EvalOptions, evaluate, load_model
from vggproto.evaluation.extract import Features, extract, write_features


@dataclass(frozen=True)
class Evaluation:
    """A finished ``evaluate`` run: the JSON summary (see :meth:`EvalResult.as_dict`) and the skipped images."""

    summary: dict
    bad: list[str]


def evaluate_files(models: Sequence[tuple[str, str]], list_path: str, options: EvalOptions, device: str = "cpu",
                   limit: int | None = None, json_path: str | None = None, force: bool = False,
                   engine: Callable | None = None) -> Evaluation:
    """Top-1/top-5 errors of the ``(deploy, weights)`` models (fused when several) on a Caffe list file; with
    ``json_path`` the summary is also written there (atomically, so a crash never leaves half a file); ``engine``
    puts each net on another inference engine (:func:`load_model`)."""
    if options.grid < 1 or options.batch < 1:
        raise VGGProtoError("--grid and --batch must be positive")
    if json_path:
        from vggproto.caffe.files import check_output
        check_output(json_path, inputs=(list_path, *(f for model in models for f in model)), kind="text",
                     force=force)
    loaded = [load_model(deploy, weights, device, options.channels_last, engine) for deploy, weights in models]
    result = evaluate(loaded, list_path, options, device, limit)
    summary = result.as_dict(options, loaded)
    summary["device"] = device
    if json_path:
        from vggproto.caffe.files import atomic_write_bytes
        atomic_write_bytes(json_path, (json.dumps(summary, indent=2) + "\n").encode())
    return Evaluation(summary, result.bad)


def extract_files(model: str, weights: str, list_path: str, out: str, *, blob: str = "fc7",
                  scales: Sequence[int] = (256, 384, 512), how: str = "average", force: bool = False,
                  **options: Any) -> Features:
    """Appendix B descriptors of a list file's images (:func:`extract`) written to the HDF5 file ``out``, with
    the run's settings as attributes so a features file says how it was made."""
    from vggproto.caffe.files import check_output
    check_output(out, inputs=(model, weights, list_path), kind="hdf5", force=force)
    features = extract(model, weights, list_path, blob=blob, scales=scales, how=how, **options)
    write_features(out, features, {"model": os.fspath(model), "weights": os.fspath(weights), "blob": blob,
                                   "scales": list(scales), "aggregate": how})
    return features
