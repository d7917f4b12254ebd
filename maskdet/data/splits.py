"""Split assignment on the whole index, then subsets and caps within the assigned splits.

The contract (DESIGN.md "Splits"): a stratified holdout test split first
(``train_test_split(test_size, stratify=label, random_state=seed)``), then
``StratifiedKFold(num_folds, shuffle=True, random_state=seed)`` over the rest; fold ``i`` is validation.
Because the assignment depends only on the index and the seed, every fold of a sweep, and every subset
evaluated later, sees the same test split, so a subset never contains an image the model trained on.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedKFold, train_test_split

from maskdet.data.demographics import normalise_group
from maskdet.errors import ConfigError, DataError


def minimum_class_size(test_size: float, num_folds: int) -> int:
    """Smallest class that still has a test image and an image in each of ``num_folds`` folds."""
    n = 2
    while n - math.ceil(n * test_size) < num_folds or math.ceil(n * test_size) < 1:
        n += 1
    return n


def assign_splits(labels: Sequence[int] | np.ndarray, test_size: float, num_folds: int, fold: int,
                  seed: int, names: Sequence[str] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(split, fold_of)`` arrays: split is train/val/test; fold_of is each pool image's fold (-1 for test)."""
    labels = np.asarray(labels)
    if not 0 < test_size < 1:
        raise ConfigError(f"data.test_size must be between 0 and 1, got {test_size}.")
    if num_folds < 2:
        raise ConfigError(f"data.num_folds must be at least 2, got {num_folds}.")
    if not 0 <= fold < num_folds:
        raise ConfigError(f"data.fold={fold} is out of range for data.num_folds={num_folds} (0..{num_folds - 1}).")
    need = minimum_class_size(test_size, num_folds)
    values, counts = np.unique(labels, return_counts=True)
    small = [(v, c) for v, c in zip(values, counts) if c < need]
    if small:
        which = ", ".join(f"'{names[v] if names is not None else v}' ({c} images)" for v, c in small)
        raise DataError(
            f"Class(es) {which} are too small to stratify: with data.test_size={test_size} and "
            f"data.num_folds={num_folds} each class needs at least {need} images. Add images, or lower data.num_folds."
        )
    # train_test_split needs at least one test and one training image per class in total; say so in config
    # terms instead of scikit-learn's traceback. The smallest / largest test_size that give that:
    n, k = len(labels), len(values)
    if math.ceil(test_size * n) < k or n - math.ceil(test_size * n) < k:
        low, high = math.ceil(1000 * k / n) / 1000, math.floor(1000 * (n - k) / n) / 1000
        raise ConfigError(
            f"data.test_size={test_size} gives {math.ceil(test_size * n)} test images of {n}, but the test and "
            f"training splits each need at least one image of each of the {k} classes: use a data.test_size "
            f"from {low} to {high}."
        )
    positions = np.arange(len(labels))
    pool, test = train_test_split(positions, test_size=test_size, stratify=labels, random_state=seed)
    split = np.full(len(labels), "train", dtype=object)
    split[test] = "test"
    fold_of = np.full(len(labels), -1, dtype=int)
    folds = StratifiedKFold(n_splits=num_folds, shuffle=True, random_state=seed)
    for k, (_, val_part) in enumerate(folds.split(pool, labels[pool])):
        fold_of[pool[val_part]] = k
    split[fold_of == fold] = "val"
    return split, fold_of


def select_subset(index: pd.DataFrame, subset: Mapping[str, object] | None) -> pd.Series:
    """Boolean mask of rows matching every ``{attribute: value or [values]}`` in ``subset``."""
    keep = pd.Series(True, index=index.index)
    for attribute, wanted in (subset or {}).items():
        if attribute not in index.columns:
            raise ConfigError(f"data.subset.{attribute}: no such column; use one of gender, race, age_group, label_name.")
        values = [wanted] if isinstance(wanted, str | int) else list(wanted)
        try:
            values = {normalise_group(attribute, v) for v in values}
        except ValueError as err:
            raise ConfigError(f"data.subset.{attribute}: {err}") from None
        keep &= index[attribute].astype(str).isin(values)
    return keep


def cap_per_class(index: pd.DataFrame, cap: int | None, seed: int) -> pd.Series:
    """Boolean mask keeping at most ``cap`` rows per (split, class), drawn with ``seed``."""
    if cap is None:
        return pd.Series(True, index=index.index)
    if cap < 1:
        raise ConfigError(f"data.cap_per_class must be a positive number or null, got {cap}.")
    shuffled = index.sample(frac=1.0, random_state=seed)
    kept = shuffled.groupby(["split", "label"], sort=False).head(cap).index
    return pd.Series(index.index.isin(kept), index=index.index)
