"""Readers that turn a dataset on disk into the *index*: one DataFrame row per image.

Columns: ``path`` (absolute), ``label_name``, ``age``, ``gender``, ``race`` and, where the source fixes it,
``split`` (train / val / test). Readers only list and parse names, they never decode, so scanning
10,000 files takes well under a second; decoding happens once, in the decoded cache. Files that cannot be
used are returned in ``skipped`` with a reason, never dropped silently.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from maskdet.data.demographics import UNKNOWN, normalise_group, parse_utkface_name
from maskdet.data.images import is_image_name
from maskdet.data.synthetic import CLASSES as SEED_CLASSES
from maskdet.errors import DataError

INDEX_COLUMNS = ["path", "label_name", "age", "gender", "race"]
SPLIT_NAMES = {"train": "train", "valid": "val", "val": "val", "validation": "val", "test": "test"}
BINARY_LABELS = {
    "without_mask": "without_mask",
    "with_surgical_mask": "with_mask",
    "with_cloth_mask": "with_mask",
    "with_ffp2_mask": "with_mask",
    "with_mask": "with_mask",
}


@dataclass
class Scan:
    """What a reader found: the index, and every file it refused with the reason."""

    index: pd.DataFrame
    skipped: list[dict] = field(default_factory=list)


def class_order(names: Iterable[str]) -> list[str]:
    """The seed's order (without_mask, surgical, cloth, ffp2) for the mask classes; otherwise sorted."""
    names = set(names)
    seed_like = list(SEED_CLASSES) + ["with_mask"]
    if names <= set(seed_like):
        return [n for n in seed_like if n in names]
    return sorted(names)


def _row(path: Path, label_name: str) -> dict:
    return {"path": str(path), "label_name": label_name, **parse_utkface_name(path.name)}


def _frame(rows: list[dict], extra: Sequence[str] = ()) -> pd.DataFrame:
    frame = pd.DataFrame(rows, columns=INDEX_COLUMNS + list(extra))
    frame["age"] = pd.to_numeric(frame["age"], errors="coerce").astype("Int64")
    return frame


def _require_root(root: str | Path | None, layout: str) -> Path:
    if root is None or str(root) == "":
        raise DataError(f"data.root is not set: pass data.root=<folder> pointing at a {layout}.")
    path = Path(root).expanduser()
    if not path.is_dir():
        raise DataError(f"data.root={root} does not exist or is not a folder: pass data.root=<folder> pointing at a {layout}.")
    return path.resolve()


def read_class_folders(root: str | Path) -> Scan:
    """One sub-folder per class (``root/<class>/**/<image>``); UTKFace names give demographics."""
    root = _require_root(root, "class-folder dataset (one sub-folder of images per class)")
    rows, skipped = [], []
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    for entry in sorted(root.iterdir()):
        if entry.is_file():
            skipped.append({"path": str(entry), "reason": "file at the top level, not inside a class folder"})
    if len(class_dirs) < 2:
        found = ", ".join(p.name for p in class_dirs) or "none"
        raise DataError(
            f"{root} has {len(class_dirs)} class folder(s) ({found}); a classifier needs at least two. "
            f"Put the images of each class in their own sub-folder, e.g. {root}/without_mask/ and {root}/with_mask/."
        )
    for class_dir in class_dirs:
        found_images = 0
        for dirpath, dirnames, filenames in os.walk(class_dir):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            for name in sorted(filenames):
                path = Path(dirpath) / name
                if is_image_name(name):
                    rows.append(_row(path, class_dir.name))
                    found_images += 1
                else:
                    skipped.append({"path": str(path), "reason": f"not an image file (extension '{path.suffix}')"})
        if found_images == 0:
            raise DataError(
                f"Class folder {class_dir} holds no image files. Add images to it or remove the folder "
                f"(image extensions: .jpg .jpeg .png .bmp .gif .webp .tif .tiff)."
            )
    return Scan(_frame(rows), skipped)


def read_roboflow(root: str | Path) -> Scan:
    """A Roboflow multiclass CSV export: ``train/ valid/ test/``, each with a one-hot ``_classes.csv``."""
    root = _require_root(root, "Roboflow multiclass export (train/, valid/, test/ with _classes.csv)")
    rows, skipped = [], []
    found = [d for d in ("train", "valid", "test") if (root / d / "_classes.csv").is_file()]
    if "train" not in found:
        raise DataError(f"{root}/train/_classes.csv not found: data=roboflow expects a Roboflow 'Multiclass Classification' CSV export.")
    for split_dir in found:
        folder = root / split_dir
        table = pd.read_csv(folder / "_classes.csv", skipinitialspace=True)
        table.columns = [str(c).strip() for c in table.columns]
        if "filename" not in table.columns:
            raise DataError(f"{folder / '_classes.csv'} has no 'filename' column (columns: {list(table.columns)}).")
        class_columns = [c for c in table.columns if c != "filename"]
        listed = set()
        for number, record in enumerate(table.itertuples(index=False), start=2):  # line 1 is the header
            values = dict(zip(table.columns, record))
            path = folder / str(values["filename"])
            listed.add(path.name)
            hot = [c for c in class_columns if pd.to_numeric(values[c], errors="coerce") == 1]
            where = f"{folder / '_classes.csv'} line {number}"
            if len(hot) != 1:
                why = "no class column is 1" if not hot else f"several class columns are 1 ({', '.join(hot)})"
                skipped.append({"path": str(path), "reason": f"{where}: {why}; multi-label rows are not guessed"})
            elif not path.is_file():
                skipped.append({"path": str(path), "reason": f"{where}: listed but the file is missing"})
            else:
                rows.append({**_row(path, hot[0]), "split": SPLIT_NAMES[split_dir]})
        for path in sorted(folder.iterdir()):
            if path.is_file() and path.name != "_classes.csv" and path.name not in listed:
                skipped.append({"path": str(path), "reason": f"not listed in {folder / '_classes.csv'}"})
    return Scan(_frame(rows, ["split"]), skipped)


def read_manifest(root: str | Path, manifest: str | Path | None = None) -> Scan:
    """A CSV with ``path`` (relative to root), ``label`` and optional ``age, gender, race, split``."""
    root = _require_root(root, "dataset folder with a manifest CSV")
    manifest_path = Path(manifest) if manifest else root / "manifest.csv"
    if not manifest_path.is_absolute() and not manifest_path.exists():
        manifest_path = root / manifest_path
    if not manifest_path.is_file():
        raise DataError(f"Manifest {manifest_path} not found: set data.manifest=<csv> (columns path,label[,age,gender,race,split]).")
    table = pd.read_csv(manifest_path, dtype=str, keep_default_na=False)
    missing = {"path", "label"} - set(table.columns)
    if missing:
        raise DataError(f"{manifest_path} lacks column(s) {sorted(missing)}; it needs path,label and optionally age,gender,race,split.")
    has_split = "split" in table.columns
    rows, skipped = [], []
    for number, record in enumerate(table.to_dict("records"), start=2):
        where = f"{manifest_path} line {number}"
        path = (root / record["path"]).resolve()
        if not path.is_relative_to(root):
            raise DataError(f"{where}: path {record['path']!r} resolves outside data.root ({root}); refusing to read it.")
        if not path.is_file():
            skipped.append({"path": str(path), "reason": f"{where}: file not found"})
            continue
        row = _row(path, str(record["label"]).strip())
        try:
            for attribute in ("gender", "race"):
                if record.get(attribute, "") != "":
                    row[attribute] = normalise_group(attribute, record[attribute])
        except ValueError as err:
            raise DataError(f"{where}: {err}") from None
        if record.get("age", "") != "":
            row["age"] = pd.to_numeric(record["age"], errors="coerce")
            row["age"] = None if pd.isna(row["age"]) else int(row["age"])
        if has_split:
            split = SPLIT_NAMES.get(str(record["split"]).strip().lower())
            if split is None:
                raise DataError(f"{where}: split {record['split']!r} is not one of train, val (valid), test.")
            row["split"] = split
        rows.append(row)
    return Scan(_frame(rows, ["split"] if has_split else []), skipped)


def apply_label_map(index: pd.DataFrame, label_map: str | Mapping[str, str] | None) -> pd.DataFrame:
    """Rename classes: ``binary`` (mask vs no mask, as in seed b) or an explicit ``{old: new}`` map."""
    if label_map is None or label_map == "none":
        return index
    mapping = BINARY_LABELS if label_map == "binary" else dict(label_map) if isinstance(label_map, Mapping) else None
    if mapping is None:
        raise DataError(f"data.label_map={label_map!r} is unknown: use null, 'binary' or a mapping {{old_class: new_class}}.")
    unmapped = sorted(set(index["label_name"]) - set(mapping))
    if unmapped:
        raise DataError(f"data.label_map does not say what to do with class(es) {unmapped}; add them to the map.")
    return index.assign(label_name=index["label_name"].map(mapping))


def fill_unknown(index: pd.DataFrame) -> pd.DataFrame:
    return index.assign(gender=index["gender"].fillna(UNKNOWN), race=index["race"].fillna(UNKNOWN))
