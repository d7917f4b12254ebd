"""From the ``data.*`` settings to the index with its splits: plain functions, no Lightning.

``prepare(settings)`` (``maskdet.data.settings.DataSettings``, the whole ``data`` config, checked when built) runs source -> index -> decoded cache ->
duplicates and groups -> splits -> subsets and returns ``PreparedData``; ``MaskDataModule`` only turns
that into batches.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass

import numpy as np
import pandas as pd

from maskdet.data import cache, sources
from maskdet.data import duplicates as dups
from maskdet.data.demographics import age_groups
from maskdet.data.images import skip
from maskdet.data.settings import DataSettings, normalised_paths
from maskdet.data.splits import assign_splits, cap_per_class, read_splits_file, select_subset
from maskdet.errors import DataError

log = logging.getLogger("maskdet.data")


@dataclass
class PreparedData:
    """The outcome of ``prepare``: one ``index`` row per usable image (path, label, demographics,
    ``split``, ``fold``, ``selected`` by data.subset / cap), and everything refused, with reasons."""

    index: pd.DataFrame
    skipped: list[dict]
    class_names: list[str]
    root: str | None
    decoded: cache.DecodedImages
    leakage: dict

    @property
    def used(self) -> pd.DataFrame:
        """The images the run uses (after data.subset and data.cap_per_class)."""
        return self.index[self.index["selected"]]


EXCLUDED = "excluded: listed in data.exclude"


def exclude_listed(index: pd.DataFrame, settings: DataSettings, root: str | None,
                   say: bool = True) -> tuple[pd.DataFrame, list[dict]]:
    """``index`` without the images ``data.exclude`` names (each one reported as skipped, with the reason);
    refused when it names none of them (a list written for other data), warned when it names files the
    index does not hold."""
    listed_file, listed = settings.exclude, normalised_paths(settings.excluded, root)
    paths = index["path"].map(os.path.normpath)
    hit = paths.isin(listed).to_numpy()
    if listed and not hit.any():
        raise DataError(f"data.exclude={listed_file} lists {len(listed)} images, none of them in this dataset "
                        f"(e.g. {sorted(listed)[0]}): it was written for other data or another data.root.")
    unmatched = len(listed) - int(hit.sum())
    if unmatched and say:
        log.warning("data.exclude=%s: %d of the %d listed images are not in this dataset (already gone, or from other "
                    "data)", listed_file, unmatched, len(listed))
    if say:
        log.info("data.exclude=%s: %d images left out", listed_file, int(hit.sum()))
    reason = f"{EXCLUDED}={listed_file}"
    return index[~hit], [skip(p, reason) for p in index.loc[hit, "path"]]


def scan_source(settings: DataSettings) -> sources.Scan:
    return sources.scan(settings.source, settings.root, settings.cache_dir)


def build_caches(settings: DataSettings) -> None:
    """The disk work, once (``LightningDataModule.prepare_data``): generate or list the source, decode the cache."""
    found = scan_source(settings)
    index = exclude_listed(found.index, settings, found.root, say=False)[0] if settings.exclude else found.index
    if settings.decoded_cache and len(index):  # the same file list as usable_index: one cache, built once
        cache.load_or_build(index["path"], settings.image_size, settings.cache_dir)


def prepare(settings: DataSettings) -> PreparedData:
    """usable index (source, label map, data.exclude, decoded cache, classes) -> duplicates and groups ->
    splits -> subsets and cap, each step a plain function of maskdet.data.duplicates / splits."""
    index, skipped, decoded, class_names, root = usable_index(settings)
    rule = dups.parse_group_by(settings.group_by)
    index, dropped, removed, unnamed = duplicates_and_groups(index, settings.duplicates, rule, settings.cache_dir)
    index["split"], index["fold"] = split_of(index, settings, class_names, root)
    leakage = dups.summarise(index, dropped, settings.duplicates, rule[0] if rule else None, unnamed)
    _warn_about_leaks(leakage, settings.duplicates)
    selected = select_subset(index, settings.subset)
    if settings.cap_per_class:
        selected &= cap_per_class(index[selected], settings.cap_per_class, settings.seed).reindex(index.index,
                                                                                                fill_value=False)
    index["selected"] = selected
    if not (selected & (index["split"] == "train")).any():
        raise DataError(f"The training split is empty after data.subset={settings.subset} and "
                        f"data.cap_per_class={settings.cap_per_class}: loosen the subset; no run trains on zero images.")
    return PreparedData(index, skipped + removed, class_names, root, decoded, leakage)


def usable_index(settings: DataSettings) -> tuple[pd.DataFrame, list[dict], cache.DecodedImages, list[str], str | None]:
    """Scan the source, decode (or validate) every file, refuse the unusable ones, number the classes."""
    found = scan_source(settings)
    index = sources.apply_label_map(sources.fill_unknown(found.index), settings.label_map)
    skipped = list(found.skipped)
    if settings.exclude:
        index, excluded = exclude_listed(index, settings, found.root)
        skipped += excluded
    decoded = cache.load_or_build(index["path"], settings.image_size, settings.cache_dir) if settings.decoded_cache \
        else cache.validate(index["path"])
    index = index.assign(cache_row=np.arange(len(index)), error=decoded.errors.values, digest=decoded.digests.values)
    index, refused = _drop_unusable(index)
    skipped += refused
    if index.empty:
        raise DataError(f"No usable images found under {found.root}: {refusal_reasons(skipped)}. Fix or replace "
                        "these files, or point data.root at the dataset.")
    class_names = sources.class_order(index["label_name"].unique())
    if len(class_names) < 2:
        raise DataError(f"Only one class ({class_names[0]}) has usable images in {found.root}; a classifier needs at "
                        f"least two. Refused: {refusal_reasons(skipped)}.")
    index["label"] = index["label_name"].map({n: i for i, n in enumerate(class_names)}).astype(int)
    index["age_group"] = age_groups(index["age"], settings.age_bins)
    return index.reset_index(drop=True), skipped, decoded, class_names, found.root


def duplicates_and_groups(index: pd.DataFrame, policy: str, rule: tuple | None,
                          cache_dir: str) -> tuple[pd.DataFrame, pd.DataFrame, list[dict], int]:
    """Find copies (data.duplicates), drop them under ``drop``, and give every image its ``split_group``:
    copies (unless ``policy`` is ``keep``) and the groups of ``rule`` (parsed data.group_by), merged.
    Returns (index, dropped rows, skipped entries, number of images no group rule matched)."""
    _, _, near = dups.load_or_compute(index["path"], index["digest"], cache_dir)
    index = dups.find_duplicates(index, near)
    dropped, removed = index.iloc[:0], []
    if policy == "drop":
        index, dropped, removed = dups.drop_copies(index)
        index = index.reset_index(drop=True)
    rule_name = rule[0] if rule else None
    if "group" in index.columns and rule_name != "manifest":
        log.warning("the manifest has a 'group' column but data.group_by is %s: its groups are not used; pass "
                    "data.group_by=manifest to keep each group inside one split", rule_name)
    keys = dups.group_keys(index, rule)
    unnamed = int((keys == "").sum()) if rule else 0
    if unnamed:
        log.warning("%d of %d images have no group under data.group_by=%s (their names do not match); each is "
                    "a group of its own", unnamed, len(index), rule_name)
    index["split_group"] = dups.split_groups(index, keys, with_duplicates=policy != "keep")
    return index, dropped, removed, unnamed


def split_of(index: pd.DataFrame, settings: DataSettings, class_names: list[str],
             root: str | None) -> tuple[np.ndarray, np.ndarray]:
    """The split and fold of every image: read from data.splits_file, fixed by the source, or assigned
    (grouped when images share a split_group)."""
    if settings.splits_file:
        log.info("reusing the split of %s", settings.splits_file)
        return read_splits_file(settings.splits_file, index, root, settings.fold)
    if "split" in index.columns and index["split"].notna().any():  # scan() accepts all fixed or none
        log.info("keeping the splits fixed by the %s source", settings.source_name)
        return index["split"].to_numpy(), np.full(len(index), -1)
    return assign_splits(index["label"].to_numpy(), settings.test_size, settings.num_folds, settings.fold,
                         settings.seed, class_names, groups=index["split_group"].to_numpy(), fold_seed=settings.fold_seed)


def _warn_about_leaks(leakage: dict, policy: str) -> None:
    """Say when copies or groups cross splits: under ``keep`` by choice, otherwise because the split was
    fixed by the source or a splits file, which maskdet does not change."""
    crossing = leakage["duplicates"]["groups_crossing_splits"]
    if crossing and policy == "keep":
        log.warning("data.duplicates=keep: %d of %d duplicate groups cross splits (train/val/test or folds), so test "
                    "images have copies in training and the test accuracy can be inflated; data.duplicates=group "
                    "keeps each group inside one split", crossing, leakage["duplicates"]["groups"])
    groups = leakage["split_groups"]["groups_crossing_splits"]
    if groups:
        log.warning("%d groups of images (copies or data.group_by) cross the splits fixed by the source or "
                    "data.splits_file, which maskdet does not change; see data_report.json", groups)


def refusal_reasons(skipped: list[dict], listed: int = 3) -> str:
    """What was refused, for a message that stops the run: each reason with its count and first files (the
    reason without a manifest's "<file> line N: " prefix, so that one reason is counted once)."""
    if not skipped:
        return "no file was refused, the source listed none"
    by_reason: dict[str, list[str]] = {}
    for entry in skipped:
        by_reason.setdefault(re.sub(r"^.* line \d+: ", "", entry["reason"]), []).append(entry["path"])
    parts = [f"{len(paths)} x {reason} (e.g. {', '.join(paths[:listed])})"
             for reason, paths in sorted(by_reason.items(), key=lambda item: -len(item[1]))]
    return f"{len(skipped)} file(s) refused: " + "; ".join(parts)


def _drop_unusable(index: pd.DataFrame) -> tuple[pd.DataFrame, list[dict]]:
    """Remove images that did not decode, and files whose identical bytes appear under two classes."""
    skipped = [skip(p, e) for p, e in zip(index["path"], index["error"]) if e]
    index = index[index["error"] == ""]
    labels_per_digest = index.groupby("digest")["label_name"].nunique()
    conflicting = set(labels_per_digest[labels_per_digest > 1].index)
    if conflicting:
        clash = index[index["digest"].isin(conflicting)]
        for _, group in clash.groupby("digest"):
            for path, label in zip(group["path"], group["label_name"]):
                others = ", ".join(f"{p} ({lab})" for p, lab in zip(group["path"], group["label_name"]) if p != path)
                skipped.append(skip(path, f"label conflict: class '{label}' but the same file content is {others}"))
        index = index[~index["digest"].isin(conflicting)]
    return index.drop(columns=["error"]), skipped
