"""The data report: what was found, how it was split, which images are copies or grouped (and whether any
group crosses splits), and every file that was refused and why. ``splits.csv`` beside it records the split."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from maskdet.data.demographics import GROUP_COLUMNS, UNKNOWN
from maskdet.data.prepare import EXCLUDED
from maskdet.jsonfile import write_json
from maskdet.writing import write_csv

if TYPE_CHECKING:
    from maskdet.data.prepare import PreparedData


def _nested_counts(frame: pd.DataFrame, columns: list[str]) -> dict:
    if frame.empty:
        return {}
    counts = frame.groupby(columns, observed=True).size()
    out: dict = {}
    for key, n in counts.items():
        key = key if isinstance(key, tuple) else (key,)
        node = out
        for part in key[:-1]:
            node = node.setdefault(str(part), {})
        node[str(key[-1])] = int(n)
    return out


def build_report(data: PreparedData, source: str) -> dict:
    """Counts of the images in use (after subsets and caps), duplicates and groups (``data.leakage``, from
    ``maskdet.data.duplicates.summarise``) and the full list of skipped files."""
    used = data.used
    return {
        "source": source,
        "root": data.root,
        "num_images": int(len(used)),
        "num_images_before_subset": int(len(data.index)),
        "classes": list(data.class_names),
        "counts": {
            "split": _nested_counts(used, ["split"]),
            "split_class": _nested_counts(used, ["split", "label_name"]),
            **{f"split_class_{g}": _nested_counts(used, ["split", "label_name", g]) for g in GROUP_COLUMNS},
        },
        "groups": {g: _nested_counts(used, [g]) for g in GROUP_COLUMNS},
        "unknown_demographics": int((used["gender"] == UNKNOWN).sum()),
        **data.leakage,
        "skipped": list(data.skipped),
    }


def format_report(report: dict) -> str:
    """A plain-text table of counts per split x class x group, then every skipped file."""
    lines = [f"{report['num_images']} images in {len(report['classes'])} classes "
             f"(source {report['source']}, root {report['root']})"]
    split_class = report["counts"]["split_class"]
    splits = [s for s in ("train", "val", "test") if s in split_class]
    header = f"{'class':<24}" + "".join(f"{s:>8}" for s in splits)
    lines += ["", header, "-" * len(header)]
    for name in report["classes"]:
        lines.append(f"{name:<24}" + "".join(f"{split_class[s].get(name, 0):>8}" for s in splits))
    lines.append(f"{'total':<24}" + "".join(f"{report['counts']['split'].get(s, 0):>8}" for s in splits))
    for group in GROUP_COLUMNS:
        table = report["counts"][f"split_class_{group}"]
        values = sorted({v for s in table.values() for c in s.values() for v in c})
        lines += ["", f"by {group}: " + ", ".join(f"{v}={report['groups'][group].get(v, 0)}" for v in values)]
        for split in splits:
            for name in report["classes"]:
                cells = table.get(split, {}).get(name, {})
                lines.append(f"  {split:<6}{name:<24}" + " ".join(f"{v}={cells.get(v, 0)}" for v in values))
    if report["unknown_demographics"]:
        lines += ["", f"{report['unknown_demographics']} images have names that do not parse as UTKFace "
                      "(age_gender_race_...): their demographics are 'unknown'."]
    lines += _format_leakage(report)
    excluded = sum(s["reason"].startswith(EXCLUDED) for s in report["skipped"])
    if excluded:
        lines += ["", f"{excluded} images left out because data.exclude lists them (below, among the skipped files)"]
    lines += ["", f"skipped files: {len(report['skipped'])}"]
    lines += [f"  {s['path']}: {s['reason']}" for s in report["skipped"]]
    return "\n".join(lines)


def _format_leakage(report: dict, shown: int = 20) -> list[str]:
    """Duplicate groups (those crossing splits first) and named groups, for the console."""
    dups, groups = report.get("duplicates"), report.get("split_groups")
    if not dups:
        return []
    lines = ["", f"duplicates (data.duplicates={dups['policy']}): {dups['groups']} groups ({dups['exact_groups']} "
                 f"exact, {dups['near_groups']} near) holding {dups['images_in_groups']} images; "
                 f"{dups['groups_crossing_splits']} cross splits or folds; {dups['copies_dropped']} copies dropped"]
    for group in dups["listed"][:shown]:
        cross = "  CROSSES SPLITS OR FOLDS" if group["crosses_splits"] else ""
        lines.append(f"  {group['kind']} group{cross}:")
        lines += [f"    {i['split'] + ('' if i.get('fold') is None else ' f' + str(i['fold'])):<10}{i['label']:<22}"
                  f"{i['path']}" for i in group["images"]]
    if dups["groups"] > shown:
        lines.append(f"  ... and {dups['groups'] - shown} more groups (the first {len(dups['listed'])} are listed in "
                     "data_report.json)")
    if groups["group_by"]:
        lines.append(f"groups (data.group_by={groups['group_by']}): {groups['groups_of_several_images']} groups of "
                     f"several images ({groups['images_in_them']} images, largest {groups['largest']}); "
                     f"{groups['names_without_group']} names match no group; "
                     f"{groups['groups_crossing_splits']} groups cross splits or folds")
    return lines


def write_report(report: dict, folder: str | Path, splits: pd.DataFrame | None = None) -> Path:
    """Write ``data_report.json`` and, given the split table (``maskdet.data.splits.splits_table``),
    ``splits.csv`` beside it; return the report's path."""
    path = write_json(Path(folder) / "data_report.json", report)
    if splits is not None:
        write_csv(splits, path.parent / "splits.csv")
    return path
