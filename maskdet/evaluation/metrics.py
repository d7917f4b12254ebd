"""Figures computed from a model's test predictions, shared by the bias audit, the comparison of
configurations and the reliability diagram.

Each takes one set of predictions (1-D arrays) or a batch of bootstrap resamples (2-D, one resample a row)
and returns one figure per row, so a bootstrap interval is the same function applied to the resamples.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from maskdet.config import import_target
from maskdet.errors import ConfigError

ECE_BINS = 15  # equal-width confidence bins of the expected calibration error and the reliability diagram


def macro_f1(y_true, y_pred) -> np.ndarray:
    """Macro-F1 of each row: the mean F1 over the classes that occur in that row's labels or predictions.

    That convention is scikit-learn's ``f1_score(average="macro", zero_division=0)`` with its default
    labels, and torchmetrics' ``MulticlassF1Score(average="macro")`` behind the training curves' f1 (it
    leaves out classes with no true positive, false positive or false negative), so all three agree. It
    also means a demographic group in which a class never occurs is not scored 0 for that class.
    Labels may be class indices or names."""
    y_true, y_pred = np.atleast_2d(y_true), np.atleast_2d(y_pred)
    total, counted = np.zeros(len(y_true)), np.zeros(len(y_true))
    for c in np.unique(np.concatenate([y_true.ravel(), y_pred.ravel()])):
        true, predicted = y_true == c, y_pred == c
        hits = (true & predicted).sum(1)
        errors = (true != predicted).sum(1)  # false positives plus false negatives
        occurs = hits + errors > 0
        total += np.where(occurs, 2 * hits / np.maximum(2 * hits + errors, 1), 0.0)
        counted += occurs
    return total / np.maximum(counted, 1)


def expected_calibration_error(confidence, correct, bins: int = ECE_BINS) -> np.ndarray:
    """ECE of each row over ``bins`` equal-width confidence bins: the mean |confidence - accuracy| gap of
    the bins, weighted by how many predictions fall in each. Biased upwards on small samples (+0.14 at
    n = 30 for a true ECE of 0.05): the bias audit's calibration figures per group are ``bias.calibration_gap``
    and ``bias.spiegelhalter_test`` instead."""
    confidence, correct = np.atleast_2d(confidence), np.atleast_2d(correct).astype(float)
    edges = np.linspace(0, 1, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1]), 0, bins - 1)
    n = confidence.shape[1]
    ece = np.zeros(confidence.shape[0])
    for b in range(bins):
        in_bin = which == b
        count = in_bin.sum(1)
        gap = np.abs((confidence * in_bin).sum(1) - (correct * in_bin).sum(1))
        ece += np.where(count > 0, gap / n, 0.0)
    return ece


# ------------------------------------------------------------------ per-group metrics of the bias audit
# A figure the audit reports per demographic group, with a bootstrap 95 % interval: a function of
# (labels, predictions, confidence), each 1-D or one bootstrap resample a row, returning one value per row.
# Adding one is one such function and its name in ``bias.metrics`` (conf/bias/default.yaml): registered here
# with its decorator, or, from your own package, named by import path (``my_pkg.figures.balanced_accuracy``).
GroupMetric = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]
GROUP_METRICS: dict[str, tuple[str, GroupMetric]] = {}


def group_metric(name: str, title: str):
    """Register a per-group metric as ``name`` (its columns in bias_report.csv: name, name_low, name_high);
    ``title`` heads its column in bias_report.md."""
    def register(function: GroupMetric) -> GroupMetric:
        function.title = title
        GROUP_METRICS[name] = (title, function)
        return function
    return register


def resolve_group_metrics(names) -> dict[str, tuple[str, GroupMetric]]:
    """column name -> (title, function) for each name of ``bias.metrics``: a registered name, or the import
    path of a function (its column is the function's name, its title its ``title`` attribute or that name)."""
    if isinstance(names, str) or not all(isinstance(n, str) for n in names):
        raise ConfigError(f"bias.metrics={names!r} must be a list of names, e.g. bias.metrics=[macro_f1,ece].")
    chosen = {}
    for name in names:
        column = name.rpartition(".")[2]
        if name in GROUP_METRICS:
            title, function = GROUP_METRICS[name]
        else:
            try:
                function = import_target(name)
            except (ImportError, AttributeError) as err:
                raise ConfigError(f"bias.metrics: {name} is not a per-group metric ({err}): use any of "
                                  f"{', '.join(GROUP_METRICS)}, or the import path of a function(labels, predictions, "
                                  "confidence) in your own package (see maskdet/evaluation/metrics.py).") from None
            title = getattr(function, "title", column)
        if column in chosen:
            raise ConfigError(f"bias.metrics: two figures would both be the column {column!r}; list each once.")
        _require_one_value_per_row(name, function)
        chosen[column] = (title, function)
    return chosen


def _require_one_value_per_row(name: str, function: GroupMetric) -> None:
    """A figure must give one value for one set of predictions and one per row for a batch of resamples
    (the bootstrap); checked on a tiny sample before any training, not found out after it."""
    labels, predictions = np.array([0, 1, 1, 0]), np.array([0, 1, 0, 0])
    confidence = np.array([0.9, 0.8, 0.6, 0.7])
    try:
        one = np.asarray(function(labels, predictions, confidence))
        rows = np.asarray(function(np.stack([labels] * 2), np.stack([predictions] * 2), np.stack([confidence] * 2)))
    except Exception as err:  # noqa: BLE001 - any failure on a valid sample is the figure's
        raise ConfigError(f"bias.metrics: {name} fails on a small sample ({type(err).__name__}: {err}); a figure takes "
                          "(labels, predictions, confidence), each 1-D or one bootstrap resample per row.") from None
    if one.shape != (1,) or rows.shape != (2,):
        raise ConfigError(f"bias.metrics: {name} returns shapes {one.shape} and {rows.shape} for one set of 4 "
                          "predictions and for 2 resamples of them; it must return one value per row: (1,) and (2,) "
                          "(see maskdet/evaluation/metrics.py).")


@group_metric("macro_f1", "macro-F1")
def group_macro_f1(y_true, y_pred, confidence) -> np.ndarray:
    return macro_f1(y_true, y_pred)


@group_metric("ece", "ECE")
def group_ece(y_true, y_pred, confidence) -> np.ndarray:
    return expected_calibration_error(confidence, np.asarray(y_true) == np.asarray(y_pred))
