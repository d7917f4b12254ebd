"""The data report: what was found, how it was split, and every file that was refused and why."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

GROUP_COLUMNS = ("gender", "race", "age_group")


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


def build_report(index: pd.DataFrame, skipped: list[dict], class_names: list[str], source: str, root: str | None) -> dict:
    """Counts of the images in use (after subsets and caps) and the full list of skipped files."""
    used = index[index["selected"]]
    return {
        "source": source,
        "root": root,
        "num_images": int(len(used)),
        "num_images_before_subset": int(len(index)),
        "classes": list(class_names),
        "counts": {
            "split": _nested_counts(used, ["split"]),
            "split_class": _nested_counts(used, ["split", "label_name"]),
            **{f"split_class_{g}": _nested_counts(used, ["split", "label_name", g]) for g in GROUP_COLUMNS},
        },
        "groups": {g: _nested_counts(used, [g]) for g in GROUP_COLUMNS},
        "unknown_demographics": int((used["gender"] == "unknown").sum()),
        "skipped": list(skipped),
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
    lines += ["", f"skipped files: {len(report['skipped'])}"]
    lines += [f"  {s['path']}: {s['reason']}" for s in report["skipped"]]
    return "\n".join(lines)


def write_report(report: dict, folder: str | Path) -> Path:
    path = Path(folder) / "data_report.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2))
    return path
