"""Linear SVM on ``vggproto extract`` descriptors (Appendix B of the paper: features fixed, one-vs-rest linear SVM).

Command line::

    vggproto svm FEATURES.h5 [--test FEATURES_TEST.h5] [--C 1.0] [--folds 5] [--json OUT] [--force]

With ``test`` the SVM is trained on FEATURES.h5 and scored on FEATURES_TEST.h5; without it, stratified k-fold
cross-validation on FEATURES.h5 (each image scored by the fold that did not train on it).  Reported: accuracy,
mean average precision (VOC-style per-class AP of the one-vs-rest decision values, averaged over classes) and mean
class recall (the Caltech protocol's mean per-class accuracy).  scikit-learn is an optional dependency (the
``svm`` extra): only this module needs it, so it is imported inside the functions.
"""
from __future__ import annotations

import json
import os
from typing import TYPE_CHECKING, Any

import numpy as np

from vggproto.caffe.files import atomic_write_bytes, check_output
from vggproto.errors import VGGProtoError

if TYPE_CHECKING:
    from vggproto.evaluation.extract import Features

#: the metrics :func:`report` computes, in the order they are printed
METRICS = ("accuracy", "mean_average_precision", "mean_class_recall")


def require_sklearn() -> None:
    """Fail with one line naming the extra to install, instead of an ImportError traceback."""
    try:
        import sklearn  # noqa: F401
    except ImportError:
        raise VGGProtoError("vggproto svm needs scikit-learn: pip install 'vggproto[svm]'") from None


def mean_average_precision(scores: np.ndarray, labels: np.ndarray, classes: np.ndarray) -> float:
    """Average over classes of the average precision of ranking every image by that class's score."""
    require_sklearn()
    from sklearn.metrics import average_precision_score
    aps = [average_precision_score(labels == c, scores[:, i]) for i, c in enumerate(classes)
           if np.any(labels == c)]
    return float(np.mean(aps)) if aps else float("nan")


def mean_class_recall(predicted: np.ndarray, labels: np.ndarray) -> float:
    """Mean over the true classes of the fraction of their images predicted correctly."""
    return float(np.mean([np.mean(predicted[labels == c] == c) for c in np.unique(labels)]))


def _scores(svm: Any, x: np.ndarray, n_classes: int) -> np.ndarray:
    """Decision values as N x classes (LinearSVC gives one column for two classes)."""
    d = svm.decision_function(x)
    return np.stack([-d, d], axis=1) if d.ndim == 1 and n_classes == 2 else d


def evaluate_svm(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray,
                 c: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Fit a one-vs-rest LinearSVC; return (predictions, decision scores, classes) on the test set."""
    require_sklearn()
    from sklearn.svm import LinearSVC
    svm = LinearSVC(C=c, max_iter=10_000)
    svm.fit(train_x, train_y)
    return svm.predict(test_x), _scores(svm, test_x, len(svm.classes_)), svm.classes_


def cross_validate(x: np.ndarray, y: np.ndarray, c: float, folds: int,
                   seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Out-of-fold predictions and scores over stratified folds."""
    require_sklearn()
    from sklearn.model_selection import StratifiedKFold
    classes = np.unique(y)
    predicted = np.empty_like(y)
    scores = np.zeros((len(y), len(classes)))
    for train, test in StratifiedKFold(folds, shuffle=True, random_state=seed).split(x, y):
        pred, score, fold_classes = evaluate_svm(x[train], y[train], x[test], y[test], c)
        predicted[test] = pred
        scores[np.ix_(test, np.searchsorted(classes, fold_classes))] = score
    return predicted, scores, classes


def report(predicted: np.ndarray, scores: np.ndarray, classes: np.ndarray, labels: np.ndarray) -> dict:
    """The metrics of one protocol as plain floats (JSON-ready)."""
    return {"images": int(len(labels)), "accuracy": float(np.mean(predicted == labels)),
            "mean_average_precision": mean_average_precision(scores, labels, classes),
            "mean_class_recall": mean_class_recall(predicted, labels)}


def _labelled(found: Features, path: str | os.PathLike) -> Features:
    """The features of ``path`` if every image has a label (extract of a list of plain paths stores -1)."""
    if found.labels.size and found.labels.min() < 0:
        raise VGGProtoError(f"{os.fspath(path)}: extracted from a list of plain image paths (labels -1); the SVM needs "
                            f"a '<image path> <label>' list at extract time")
    return found


def svm_files(features: str | os.PathLike, test: str | os.PathLike | None = None, c: float = 1.0, folds: int = 5,
              json_path: str | os.PathLike | None = None, force: bool = False) -> dict:
    """``vggproto svm`` as one call: train on ``features``, score on ``test`` (or cross-validate with at most
    ``folds`` folds), optionally write the metrics to ``json_path``; return them.

    The output is checked and scikit-learn looked for before the features are read, so a bad call fails at once.
    """
    if json_path is not None:
        check_output(json_path, inputs=(features, test), kind="text", force=force)
    require_sklearn()
    from vggproto.evaluation.extract import read_features
    train = _labelled(read_features(features), features)
    if test is not None:
        scored = _labelled(read_features(test), test)
        predicted, scores, classes = evaluate_svm(train.features, train.labels, scored.features, scored.labels, c)
        metrics = report(predicted, scores, classes, scored.labels)
        metrics["protocol"] = "train/test"
    else:
        _, counts = np.unique(train.labels, return_counts=True)
        folds = min(folds, int(counts.min()) if counts.size else 0)
        if folds < 2:
            raise VGGProtoError(f"{features}: cross-validation needs at least 2 images per class; pass --test")
        predicted, scores, classes = cross_validate(train.features, train.labels, c, folds)
        metrics = report(predicted, scores, classes, train.labels)
        metrics["protocol"] = f"{folds}-fold cross-validation"
    if json_path is not None:
        atomic_write_bytes(json_path, (json.dumps(metrics, indent=2) + "\n").encode())
    return metrics


def format_metrics(metrics: dict) -> str:
    """The lines ``vggproto svm`` prints: each metric in percent, then the image count and protocol."""
    lines = [f"{key.replace('_', ' '):<24} {100 * metrics[key]:6.2f} %" for key in METRICS]
    lines.append(f"{'images':<24} {metrics['images']}  ({metrics['protocol']})")
    return "\n".join(lines)
