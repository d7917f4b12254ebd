"""Split assignment on the whole index, then subsets and caps within the assigned splits.

The contract (docs/architecture.md, "Splits"): a stratified holdout test split first
(``train_test_split(test_size, stratify=label, random_state=seed)``), then
``StratifiedKFold(num_folds, shuffle=True, random_state=seed)`` over the rest; fold ``i`` is validation.
``fold_seed`` (``data.fold_seed``), when given, replaces ``seed`` for the folds only: the same pool drawn into
other folds (repeated k-fold), the test split unchanged.
Because the assignment depends only on the index and the seed, every fold of a sweep, and every subset
evaluated later, sees the same test split, so a subset never contains an image the model trained on.

With groups (copies of one picture, images of one source photograph: ``maskdet.data.duplicates``) the
same contract holds per group: ``StratifiedGroupKFold`` keeps every group inside one split and one fold.
Without groups the code path above is used unchanged, so the COMP6721 study's split table stays what it was.
The assignment is written to ``splits.csv`` and can be read back (``data.splits_file``).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from fractions import Fraction
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold, train_test_split

from maskdet.data.demographics import normalise_group
from maskdet.errors import ConfigError, DataError


def minimum_class_size(test_size: float, num_folds: int) -> int:
    """Smallest class that still has a test image and an image in each of ``num_folds`` folds."""
    n = 2
    while n - math.ceil(n * test_size) < num_folds or math.ceil(n * test_size) < 1:
        n += 1
    return n


def assign_splits(labels: Sequence[int] | np.ndarray, test_size: float, num_folds: int, fold: int,
                  seed: int, names: Sequence[str] | None = None,
                  groups: Sequence[int] | np.ndarray | None = None,
                  fold_seed: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(split, fold_of)`` arrays: split is train/val/test; fold_of is each pool image's fold (-1 for test).

    ``groups`` (one id per image): images sharing an id get the same split and fold. When no id is shared
    (or ``groups`` is None) the ungrouped split is used."""
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
    fold_seed = seed if fold_seed is None else fold_seed
    if groups is not None and len(groups) and np.unique(groups, return_counts=True)[1].max() > 1:
        return _grouped_splits(labels, np.asarray(groups), test_size, num_folds, fold, seed, fold_seed)
    positions = np.arange(len(labels))
    pool, test = train_test_split(positions, test_size=test_size, stratify=labels, random_state=seed)
    split = np.full(len(labels), "train", dtype=object)
    split[test] = "test"
    fold_of = np.full(len(labels), -1, dtype=int)
    folds = StratifiedKFold(n_splits=num_folds, shuffle=True, random_state=fold_seed)
    for k, (_, val_part) in enumerate(folds.split(pool, labels[pool])):
        fold_of[pool[val_part]] = k
    split[fold_of == fold] = "val"
    return split, fold_of


def _grouped_splits(labels: np.ndarray, groups: np.ndarray, test_size: float, num_folds: int, fold: int,
                    seed: int, fold_seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The contract with groups: the test split is ``k`` of ``m`` StratifiedGroupKFold folds, where k/m is
    test_size as a fraction with m <= 20 (0.3 -> 3 of 10 folds, so the test share stays 30 %, where one fold
    of round(1 / 0.3) = 3 would give 33 %; GroupShuffleSplit would not stratify). The pool is then split
    by StratifiedGroupKFold(num_folds)."""
    share = Fraction(test_size).limit_denominator(20)
    if share.numerator == 0:  # below 1/40: one fold of round(1 / test_size)
        share = Fraction(1, round(1 / test_size))
    positions = np.arange(len(labels))
    n_groups = len(np.unique(groups))
    if n_groups < max(share.denominator, num_folds):
        raise DataError(f"Only {n_groups} groups of images (data.group_by and duplicates keep each group in one "
                        f"split): a grouped split with data.test_size={test_size} and data.num_folds={num_folds} "
                        f"needs at least {max(share.denominator, num_folds)}. Lower data.num_folds, or use a finer "
                        "data.group_by.")
    holdout = StratifiedGroupKFold(n_splits=share.denominator, shuffle=True, random_state=seed)
    part_of = np.empty(len(labels), dtype=int)
    for k, (_, part) in enumerate(holdout.split(positions, labels, groups)):
        part_of[part] = k
    test = part_of < share.numerator
    pool = positions[~test]
    if len(np.unique(groups[pool])) < num_folds:
        raise DataError(f"The training pool holds only {len(np.unique(groups[pool]))} groups of images, fewer than "
                        f"data.num_folds={num_folds}: lower data.num_folds.")
    split = np.where(test, "test", "train").astype(object)
    fold_of = np.full(len(labels), -1, dtype=int)
    folds = StratifiedGroupKFold(n_splits=num_folds, shuffle=True, random_state=fold_seed)
    for k, (_, val_part) in enumerate(folds.split(pool, labels[pool], groups[pool])):
        fold_of[pool[val_part]] = k
    split[fold_of == fold] = "val"
    return split, fold_of


def _relative(paths: pd.Series, root: str | Path | None) -> pd.Series:
    """Paths relative to the dataset root where they lie inside it (so a splits file travels with the
    dataset), absolute otherwise."""
    if root is None:
        return paths
    root = os.path.realpath(root)
    return paths.map(lambda p: os.path.relpath(p, root) if p and p.startswith(root + os.sep) else p)


def splits_table(index: pd.DataFrame, root: str | Path | None) -> pd.DataFrame:
    """``splits.csv``: one row per image kept (path relative to the dataset root, label, split, fold under
    k-fold, group id where the image shares one, the copy it duplicates, whether subsets and caps kept it)."""
    sizes = index.groupby("split_group")["split_group"].transform("size") if "split_group" in index else None
    return pd.DataFrame({
        "path": _relative(index["path"], root),
        "label": index["label_name"],
        "split": index["split"],
        "fold": index["fold"].where(index["fold"] >= 0).astype("Int64"),
        "group": index["split_group"].where(sizes > 1).astype("Int64") if sizes is not None else pd.NA,
        "duplicate_of": _relative(index["duplicate_of"], root) if "duplicate_of" in index else "",
        "selected": index["selected"] if "selected" in index else True,
    })


def read_splits_file(path: str | Path, index: pd.DataFrame, root: str | Path | None, fold: int,
                     listed: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """``(split, fold_of)`` for ``index`` from a ``splits.csv`` written by an earlier run: the exact split.

    The file must list exactly the dataset's images with the same labels; otherwise the error says which
    differ. Under k-fold the fold column picks the validation fold ``fold`` (the file's val column is the
    fold of the run that wrote it)."""
    where = f"data.splits_file={path}"
    try:
        table = pd.read_csv(path, dtype={"path": str, "label": str, "split": str}, keep_default_na=False)
    except FileNotFoundError:
        raise DataError(f"{where}: no such file; pass the splits.csv of an earlier run (its run folder).") from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise DataError(f"{where} is not a readable splits.csv: {err}") from None
    missing = {"path", "label", "split"} - set(table.columns)
    if missing:
        raise DataError(f"{where} lacks column(s) {sorted(missing)}: it must be a splits.csv written by maskdet "
                        "(path, label, split, fold, group, duplicate_of).")
    bad = sorted(set(table["split"]) - {"train", "val", "test"})
    if bad:
        raise DataError(f"{where}: split values {bad} are not train, val or test.")
    paths = _relative(index["path"], root)
    repeated = table[table["path"].duplicated(keep=False)]
    if len(repeated):  # which row would be meant is not for maskdet to guess
        first = repeated[repeated["path"] == repeated["path"].iloc[0]]
        rows = "; ".join(f"split {s!r}, label {lab!r}" + (f", fold {f!r}" if "fold" in first else "")
                         for s, lab, f in zip(first["split"], first["label"], first.get("fold", first["split"])))
        raise DataError(f"{where} lists {repeated['path'].nunique()} image(s) more than once (e.g. "
                        f"{first['path'].iloc[0]}: {rows}): a splits file gives each image one row. Write a new one "
                        "with python -m maskdet.data, or keep one row per image.")
    known = set(table["path"])
    absent, extra = sorted(set(paths) - known), sorted(known - set(paths))
    if absent or extra:
        raise DataError(
            f"{where} does not match the dataset: {len(absent)} of its {len(set(paths))} images are not in the file"
            f"{' (e.g. ' + ', '.join(absent[:listed]) + ')' if absent else ''} and {len(extra)} rows of the file "
            f"are not in the dataset{' (e.g. ' + ', '.join(extra[:listed]) + ')' if extra else ''}. A splits file "
            "fits only the images it was written for, after the same data.duplicates policy and label map; write "
            "a new one with python -m maskdet.data, or drop data.splits_file.")
    row = table.set_index("path").loc[paths]
    relabelled = (row["label"].to_numpy() != index["label_name"].to_numpy())
    if relabelled.any():
        first = np.flatnonzero(relabelled)[0]
        raise DataError(f"{where}: {int(relabelled.sum())} images changed class since the file was written (e.g. "
                        f"{paths.iloc[first]}: {row['label'].iloc[first]} in the file, {index['label_name'].iloc[first]} "
                        "now). Write a new splits file, or drop data.splits_file.")
    split = row["split"].to_numpy(dtype=object)
    fold_of = pd.to_numeric(row["fold"], errors="coerce").fillna(-1).astype(int).to_numpy() \
        if "fold" in row.columns else np.full(len(row), -1)
    if (fold_of >= 0).any():
        if fold not in set(fold_of):
            raise DataError(f"{where} has folds {sorted(set(fold_of[fold_of >= 0]))}; data.fold={fold} is not one "
                            "of them.")
        pool = split != "test"
        split[pool] = np.where(fold_of[pool] == fold, "val", "train")
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
