"""Readers that turn a dataset on disk into the *index*: one DataFrame row per image.

A data layout is one reader function here (or in any importable module) plus one YAML in
``maskdet/conf/data/`` whose ``source`` names it as a Hydra partial::

    source:
      _target_: maskdet.data.sources.read_manifest
      _partial_: true
      manifest: null        # the reader's own options: data.source.manifest=<csv>

``scan`` calls the reader with ``root`` (``data.root``) and/or ``cache_dir`` (``data.cache_dir``), those
of the two its signature names, plus the options given in the YAML.

Columns: ``path`` (absolute), ``label_name``, ``age``, ``gender``, ``race`` and, where the source fixes it,
``split`` (train / val / test). Readers only list and parse names, they never decode, so scanning
10,000 files takes well under a second; decoding happens once, in the decoded cache. Files that cannot be
used (``images.path_problem``: broken links, links or listed paths leading outside ``data.root``, hidden
files, names that are not UTF-8, non-images) are returned in ``skipped`` with a reason, never dropped
silently; so are hidden folders and linked folders, which are not searched.
"""

from __future__ import annotations

import inspect
import json
import logging
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from maskdet.data.demographics import NAME_ATTRIBUTES, UNKNOWN, normalise_group, parse_utkface_name
from maskdet.data.images import display_path, folder_problem, is_utf8, list_image_files, path_problem, skip
from maskdet.data.synthetic import (
    CLASSES,
    COMP6721_COUNTS,
    INCORRECT,
    SyntheticSpec,
    ensure_dataset,
    make_spec,
)
from maskdet.errors import DataError

INDEX_COLUMNS = ["path", "label_name", "age", *NAME_ATTRIBUTES]
SPLIT_NAMES = {"train": "train", "valid": "val", "val": "val", "validation": "val", "test": "test"}
BINARY_LABELS = {
    "without_mask": "without_mask",
    "with_surgical_mask": "with_mask",
    "with_cloth_mask": "with_mask",
    "with_ffp2_mask": "with_mask",
    "with_mask": "with_mask",
    # a mask below the nose or on the chin does not protect: counted as no mask (a mapping decides otherwise)
    INCORRECT: "without_mask",
}


@dataclass
class Scan:
    """What a reader found: the index, and every file it refused with the reason."""

    index: pd.DataFrame
    skipped: list[dict] = field(default_factory=list)
    root: str | None = None  # the folder the index's paths are under (reports and splits.csv name paths from it)


Reader = Callable[..., Scan]


def source_name(reader: Reader) -> str:
    """A reader's short name for reports and messages: ``read_manifest`` -> ``manifest``."""
    return getattr(reader, "func", reader).__name__.removeprefix("read_")


def scan(reader: Reader, root: str | Path | None, cache_dir: str | Path) -> Scan:
    """Run ``reader`` with the context it asks for by name (``root``, ``cache_dir``), and hold what it returns
    to the index contract, so that a new layout's mistake is named here rather than found downstream."""
    wanted = inspect.signature(reader).parameters
    context = {"root": root, "cache_dir": cache_dir}
    found = reader(**{k: v for k, v in context.items() if k in wanted})
    name = f"data.source ({getattr(reader, 'func', reader).__module__}.{source_name(reader)})"
    if not isinstance(found, Scan):
        raise DataError(f"{name} returned {type(found).__name__}, not a maskdet.data.sources.Scan(index, skipped, root).")
    missing = [c for c in INDEX_COLUMNS if c not in found.index.columns]
    if missing:
        raise DataError(f"{name} returned an index without the column(s) {missing}: every reader gives "
                        f"{', '.join(INDEX_COLUMNS)} (None where a demographic is unknown).")
    relative = [p for p in found.index["path"] if not Path(p).is_absolute()]
    if relative:
        raise DataError(f"{name} returned {len(relative)} relative path(s), e.g. {relative[0]!r}: index paths must be "
                        "absolute (e.g. str(root / name)).")
    if "split" in found.index.columns:
        given = found.index["split"].dropna()
        wrong = sorted(set(given) - {"train", "val", "test"})
        if wrong:
            raise DataError(f"{name} returned split value(s) {wrong}: use train, val or test.")
        if 0 < len(given) < len(found.index):
            raise DataError(f"{name} fixes the split of {len(given)} of {len(found.index)} images: a layout fixes the "
                            "split of every image (then it is kept) or of none (then maskdet assigns it).")
    return found


def class_order(names: Iterable[str]) -> list[str]:
    """The COMP6721 study's order (without_mask, surgical, cloth, ffp2, then mask_weared_incorrect) for the mask
    classes; otherwise sorted."""
    names = set(names)
    known = [*CLASSES, INCORRECT, "with_mask"]
    if names <= set(known):
        return [n for n in known if n in names]
    return sorted(names)


# Building blocks for readers (the shipped ones and yours): one index row, the index, a checked root, a CSV.
def image_row(path: Path, label_name: str) -> dict:
    """One index row: the absolute path, the class, and age / gender / race from a UTKFace-style name."""
    return {"path": str(path), "label_name": label_name, **parse_utkface_name(path.name)}


def index_frame(rows: list[dict], extra: Sequence[str] = ()) -> pd.DataFrame:
    """The index from ``image_row`` dicts: INDEX_COLUMNS plus ``extra`` (``split``, ``group``), ages as integers."""
    frame = pd.DataFrame(rows, columns=INDEX_COLUMNS + list(extra))
    frame["age"] = pd.to_numeric(frame["age"], errors="coerce").astype("Int64")
    return frame


def require_root(root: str | Path | None, layout: str) -> Path:
    """``data.root`` resolved, or a DataError saying it is unset, missing or not UTF-8 (``layout`` describes it)."""
    if root is None or str(root) == "":
        raise DataError(f"data.root is not set: pass data.root=<folder> pointing at a {layout}.")
    path = Path(root).expanduser()
    if not path.is_dir():
        raise DataError(f"data.root={root} does not exist or is not a folder: pass data.root=<folder> pointing at a {layout}.")
    if not is_utf8(path.resolve()):
        raise DataError(f"data.root={display_path(path.resolve())} has a name that is not valid UTF-8: rename the folder "
                        "(for example with convmv) or link to it from a UTF-8 name.")
    return path.resolve()


def read_table(path: Path, **options) -> pd.DataFrame:
    """``pd.read_csv`` with a one-paragraph DataError for files that are empty, not UTF-8 or not CSV."""
    what = "data.source.manifest" if path.name != "_classes.csv" else "a Roboflow export's _classes.csv"
    try:
        return pd.read_csv(path, encoding="utf-8-sig", **options)  # -sig: accept the BOM that Excel writes
    except pd.errors.EmptyDataError:
        raise DataError(f"{path} is empty: {what} must be a CSV file with a header line.") from None
    except UnicodeDecodeError as err:
        raise DataError(f"{path} is not UTF-8 text (byte {err.object[err.start:err.start + 1]!r} at offset "
                        f"{err.start}): save {what} as UTF-8 CSV.") from None
    except pd.errors.ParserError as err:
        raise DataError(f"{path} is not a readable CSV file: {err}") from None


def read_class_folders(root: str | Path) -> Scan:
    """One sub-folder per class (``root/<class>/**/<image>``); UTKFace names give demographics."""
    root = require_root(root, "class-folder dataset (one sub-folder of images per class)")
    rows, skipped, class_dirs = [], [], []
    for entry in sorted(root.iterdir()):
        if entry.is_dir():
            problem = folder_problem(entry)
            if problem:
                skipped.append(skip(entry, problem))
            else:
                class_dirs.append(entry)
        else:
            skipped.append(skip(entry, path_problem(entry, root) or "file at the top level, not inside a class folder"))
    if len(class_dirs) < 2:
        found = ", ".join(p.name for p in class_dirs) or "none"
        raise DataError(
            f"{root} has {len(class_dirs)} class folder(s) ({found}); a classifier needs at least two. "
            f"Put the images of each class in their own sub-folder, e.g. {root}/without_mask/ and {root}/with_mask/."
        )
    for class_dir in class_dirs:
        files, refused = list_image_files(class_dir, root)
        skipped += refused
        rows += [image_row(path, class_dir.name) for path in files]
        if not files:
            example = f" ({len(refused)} entries skipped, e.g. {refused[0]['path']}: {refused[0]['reason']})" if refused else ""
            raise DataError(
                f"Class folder {class_dir} holds no image files that can be used{example}. Add images to it or "
                f"remove the folder (image extensions: .jpg .jpeg .png .bmp .gif .webp .tif .tiff)."
            )
    return Scan(index_frame(rows), skipped, str(root))


def read_synthetic(cache_dir: str | Path, per_class: int | Sequence[int] = COMP6721_COUNTS,
                   seed: int = SyntheticSpec.seed, size: int = SyntheticSpec.size, bias: Mapping | None = None,
                   shared_faces: int = SyntheticSpec.shared_faces, incorrect_wear: bool = SyntheticSpec.incorrect_wear,
                   label_noise: float = SyntheticSpec.label_noise, outliers: int = SyntheticSpec.outliers) -> Scan:
    """The embedded dataset (``maskdet.data.synthetic``), generated into ``cache_dir`` on first use; the
    options are ``synthetic.make_spec``'s, their defaults those of data/synthetic.yaml."""
    try:
        spec = make_spec(per_class, seed, size, bias, shared_faces, incorrect_wear, label_noise, outliers)
    except (TypeError, ValueError) as err:
        raise DataError(str(err)) from None
    return read_class_folders(ensure_dataset(spec, cache_dir))


def read_roboflow(root: str | Path) -> Scan:
    """A Roboflow multiclass CSV export: ``train/ valid/ test/``, each with a one-hot ``_classes.csv``."""
    root = require_root(root, "Roboflow multiclass export (train/, valid/, test/ with _classes.csv)")
    rows, skipped = [], []
    found = [d for d in ("train", "valid", "test") if (root / d / "_classes.csv").is_file()]
    if "train" not in found:
        raise DataError(f"{root}/train/_classes.csv not found: data=roboflow expects a Roboflow 'Multiclass Classification' CSV export.")
    for split_dir in found:
        folder = root / split_dir
        table = read_table(folder / "_classes.csv", skipinitialspace=True)
        table.columns = [str(c).strip() for c in table.columns]
        if "filename" not in table.columns:
            raise DataError(f"{folder / '_classes.csv'} has no 'filename' column (columns: {list(table.columns)}).")
        class_columns = [c for c in table.columns if c != "filename"]
        listed = set()
        for number, record in enumerate(table.itertuples(index=False), start=2):  # line 1 is the header
            values = dict(zip(table.columns, record))
            path = Path(os.path.normpath(folder / str(values["filename"])))
            listed.add(path)
            hot = [c for c in class_columns if pd.to_numeric(values[c], errors="coerce") == 1]
            where = f"{folder / '_classes.csv'} line {number}"
            problem = path_problem(path, root)
            if len(hot) != 1:
                why = "no class column is 1" if not hot else f"several class columns are 1 ({', '.join(hot)})"
                skipped.append(skip(path, f"{where}: {why}; multi-label rows are not guessed"))
            elif problem:
                skipped.append(skip(path, f"{where}: {problem}"))
            else:
                rows.append({**image_row(path, hot[0]), "split": SPLIT_NAMES[split_dir]})
        for path in sorted(folder.iterdir()):
            if path.name != "_classes.csv" and path not in listed:
                problem = path_problem(path, root)
                skipped.append(skip(path, problem if problem and not problem.startswith("not an image")
                                    else f"not listed in {folder / '_classes.csv'}"))
    return Scan(index_frame(rows, ["split"]), skipped, str(root))


def read_manifest(root: str | Path, manifest: str | Path | None = None) -> Scan:
    """A CSV with ``path`` (relative to root), ``label`` and optional ``age, gender, race, split``.

    Rows that cannot be used (missing file, path leading outside root, empty label) are skipped with their
    line number. An age that is not a whole number from 0 to 130 keeps the image with age unknown, and is
    listed among the skipped entries too (its reason says the image is kept), so it is not lost silently.
    """
    root = require_root(root, "dataset folder with a manifest CSV")
    manifest_path = Path(manifest) if manifest else root / "manifest.csv"
    if not manifest_path.is_absolute() and not manifest_path.exists():
        manifest_path = root / manifest_path
    if not manifest_path.is_file():
        raise DataError(f"Manifest {manifest_path} not found: set data.source.manifest=<csv> (columns path,label[,age,gender,race,split]).")
    table = read_table(manifest_path, dtype=str, keep_default_na=False)
    table.columns = [str(c).strip() for c in table.columns]
    missing = {"path", "label"} - set(table.columns)
    if missing:
        raise DataError(f"{manifest_path} lacks column(s) {sorted(missing)}; it needs path,label and optionally age,gender,race,split.")
    has_split = "split" in table.columns
    rows, skipped = [], []
    for number, record in enumerate(table.to_dict("records"), start=2):
        where = f"{manifest_path} line {number}"
        path = Path(os.path.normpath(root / record["path"]))
        problem = path_problem(path, root)
        if problem:
            skipped.append(skip(path, f"{where}: {problem}"))
            continue
        label = str(record["label"]).strip()
        if not label:
            skipped.append(skip(path, f"{where}: empty label; the row is skipped"))
            continue
        row = image_row(path.resolve(), label)
        try:
            for attribute in NAME_ATTRIBUTES:
                if record.get(attribute, "") != "":
                    row[attribute] = normalise_group(attribute, record[attribute])
        except ValueError as err:
            raise DataError(f"{where}: {err}") from None
        age = str(record.get("age", "")).strip()
        if age:
            number_age = pd.to_numeric(age, errors="coerce")
            if pd.isna(number_age) or not 0 <= number_age <= 130 or number_age != int(number_age):
                row["age"] = None
                skipped.append(skip(path, f"{where}: age {age!r} is not a whole number from 0 to 130; "
                                          "the image is kept with age unknown"))
            else:
                row["age"] = int(number_age)
        if "group" in table.columns:  # images with the same group stay in one split (data.group_by=manifest)
            row["group"] = str(record["group"]).strip()
        if has_split:
            split = SPLIT_NAMES.get(str(record["split"]).strip().lower())
            if split is None:
                raise DataError(f"{where}: split {record['split']!r} is not one of train, val (valid), test.")
            row["split"] = split
        rows.append(row)
    extra = (["split"] if has_split else []) + (["group"] if "group" in table.columns else [])
    return Scan(index_frame(_one_row_per_file(rows, manifest_path, extra), extra), skipped, str(root))


def _one_row_per_file(rows: list[dict], manifest_path: Path, columns: Sequence[str]) -> list[dict]:
    """A file listed twice would otherwise be trained on and tested on (one row ``train``, one ``test``), or
    carry two labels: rows that disagree are refused; identical repeats are collapsed into one, with a warning."""
    seen: dict[str, dict] = {}
    for row in rows:
        first = seen.setdefault(row["path"], row)
        if first is row:
            continue
        differ = [c for c in ("label_name", *columns, *NAME_ATTRIBUTES, "age") if str(first.get(c)) != str(row.get(c))]
        if differ:
            values = "; ".join(f"{'label' if c == 'label_name' else c} {first.get(c)!r} and {row.get(c)!r}" for c in differ)
            raise DataError(f"{manifest_path} lists {row['path']} twice with different values ({values}): one image "
                            "can have one label and sit in one split. Keep one row for it, or give the second "
                            "picture its own file.")
    if len(seen) < len(rows):
        logging.getLogger(__name__).warning("%s lists %d file(s) more than once with the same values; each is used "
                                            "once", manifest_path, len(rows) - len(seen))
    return list(seen.values())


def apply_label_map(index: pd.DataFrame, label_map: str | Mapping[str, str] | None) -> pd.DataFrame:
    """Rename classes: ``binary`` (mask vs no mask, as in the transfer-learning notebook) or an explicit
    ``{old: new}`` map."""
    if label_map is None or label_map == "none":
        return index
    mapping = BINARY_LABELS if label_map == "binary" else dict(label_map) if isinstance(label_map, Mapping) else None
    if mapping is None:
        raise DataError(f"data.label_map={label_map!r} is unknown: use null, 'binary' or a mapping {{old_class: new_class}}.")
    regions = {label for cell in index.get("ignore", []) for label, *_ in json.loads(cell)}  # scene sets' ignore regions
    unmapped = sorted((set(index["label_name"]) | regions) - set(mapping))
    if unmapped:
        raise DataError(f"data.label_map does not say what to do with class(es) {unmapped}; add them to the map.")
    index = index.assign(label_name=index["label_name"].map(mapping))
    if "ignore" in index.columns:  # a scene set's ignore regions carry class names too (maskdet.data.scene_boxes)
        index["ignore"] = [json.dumps([[mapping[label], *box] for label, *box in json.loads(cell)])
                           for cell in index["ignore"]]
    return index


def fill_unknown(index: pd.DataFrame) -> pd.DataFrame:
    return index.assign(gender=index["gender"].fillna(UNKNOWN), race=index["race"].fillna(UNKNOWN))
