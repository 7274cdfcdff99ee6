#!/usr/bin/env python
"""Linear SVM on ``vggproto extract`` descriptors (Appendix B of the paper: features fixed, one-vs-rest linear SVM).

Usage::

    python tools/svm_transfer.py FEATURES.h5 [--test FEATURES_TEST.h5] [--C 1.0] [--folds 5] [--json OUT]

With ``--test`` the SVM is trained on FEATURES.h5 and scored on FEATURES_TEST.h5; without it, stratified k-fold
cross-validation on FEATURES.h5 (each image scored by the fold that did not train on it).  Reported: accuracy,
mean average precision (VOC-style per-class AP of the one-vs-rest decision values, averaged over classes) and mean
class recall (the Caltech protocol's mean per-class accuracy).
"""
from __future__ import annotations

import argparse
import json
import sys

import numpy as np


def mean_average_precision(scores: np.ndarray, labels: np.ndarray, classes: np.ndarray) -> float:
    """Average over classes of the average precision of ranking every image by that class's score."""
    from sklearn.metrics import average_precision_score
    aps = [average_precision_score(labels == c, scores[:, i]) for i, c in enumerate(classes)
           if np.any(labels == c)]
    return float(np.mean(aps)) if aps else float("nan")


def mean_class_recall(predicted: np.ndarray, labels: np.ndarray) -> float:
    """Mean over the true classes of the fraction of their images predicted correctly."""
    return float(np.mean([np.mean(predicted[labels == c] == c) for c in np.unique(labels)]))


def _scores(svm, x: np.ndarray, n_classes: int) -> np.ndarray:
    """Decision values as N x classes (LinearSVC gives one column for two classes)."""
    d = svm.decision_function(x)
    return np.stack([-d, d], axis=1) if d.ndim == 1 and n_classes == 2 else d


def evaluate_svm(train_x, train_y, test_x, test_y, c: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Fit a one-vs-rest LinearSVC; return (predictions, decision scores, classes) on the test set."""
    from sklearn.svm import LinearSVC
    svm = LinearSVC(C=c, max_iter=10_000)
    svm.fit(train_x, train_y)
    return svm.predict(test_x), _scores(svm, test_x, len(svm.classes_)), svm.classes_


def cross_validate(x, y, c: float, folds: int, seed: int = 0):
    """Out-of-fold predictions and scores over stratified folds."""
    from sklearn.model_selection import StratifiedKFold
    classes = np.unique(y)
    predicted = np.empty_like(y)
    scores = np.zeros((len(y), len(classes)))
    for train, test in StratifiedKFold(folds, shuffle=True, random_state=seed).split(x, y):
        pred, score, fold_classes = evaluate_svm(x[train], y[train], x[test], y[test], c)
        predicted[test] = pred
        scores[np.ix_(test, np.searchsorted(classes, fold_classes))] = score
    return predicted, scores, classes


def report(predicted, scores, classes, labels) -> dict:
    return {"images": int(len(labels)), "accuracy": float(np.mean(predicted == labels)),
            "mean_average_precision": mean_average_precision(scores, labels, classes),
            "mean_class_recall": mean_class_recall(predicted, labels)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("features", help="HDF5 written by `vggproto extract` (training set)")
    parser.add_argument("--test", help="HDF5 of the test set (default: cross-validation on FEATURES)")
    parser.add_argument("--C", type=float, default=1.0, help="SVM regularisation constant (default 1)")
    parser.add_argument("--folds", type=int, default=5, help="cross-validation folds without --test (default 5)")
    parser.add_argument("--json", help="write the metrics as JSON")
    args = parser.parse_args(argv)
    from vggproto.errors import VGGProtoError
    from vggproto.evaluation.extract import read_features
    try:
        train = read_features(args.features)
        if args.test:
            test = read_features(args.test)
            predicted, scores, classes = evaluate_svm(train.features, train.labels, test.features, test.labels,
                                                      args.C)
            metrics = report(predicted, scores, classes, test.labels)
            metrics["protocol"] = "train/test"
        else:
            smallest = int(np.bincount(train.labels).max(initial=0) and
                           min(np.bincount(train.labels)[np.unique(train.labels)]))
            folds = min(args.folds, smallest)
            if folds < 2:
                raise VGGProtoError(f"{args.features}: cross-validation needs at least 2 images per class; "
                                    f"pass --test")
            predicted, scores, classes = cross_validate(train.features, train.labels, args.C, folds)
            metrics = report(predicted, scores, classes, train.labels)
            metrics["protocol"] = f"{folds}-fold cross-validation"
    except VGGProtoError as exc:
        print(f"svm_transfer: error: {exc}", file=sys.stderr)
        return 1
    for key in ("accuracy", "mean_average_precision", "mean_class_recall"):
        print(f"{key.replace('_', ' '):<24} {100 * metrics[key]:6.2f} %")
    print(f"{'images':<24} {metrics['images']}  ({metrics['protocol']})")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(metrics, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
