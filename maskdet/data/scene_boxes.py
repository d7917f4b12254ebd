"""Scene datasets with face boxes as data layouts: Pascal VOC XML, YOLO txt and COCO JSON.

The face-mask sets people download for masks in scenes (the Kaggle face-mask detection set: Pascal VOC XML
with ``with_mask``, ``without_mask`` and ``mask_weared_incorrect`` boxes; YOLO and COCO exports of the same
kind) annotate photos, not crops. Each box becomes a face crop cut as ``predict detect=true`` cuts a
detected face (``maskdet.detect.crop_box``: a square ``1 + 2 * margin`` times the box's longer side, moved
to stay inside the photo), so training crops and inference crops are framed alike. The crops are written
once per (annotations, photos, margin) into ``<cache_dir>/scene_crops/<key>/<class>/`` (atomically, as the
embedded dataset is) and are then images like any other: decoded into the cache, grouped, split.

Every crop's ``group`` is its source photo, and the layouts' YAMLs set ``data.group_by: manifest`` (the
source's group column), so all faces of one photo stay in one split and one fold. Boxes that cannot be used
(outside the photo, empty or degenerate, smaller than 8 px, of a class the annotations do not name) and
photos that are missing or unreadable are listed in ``skipped`` with the annotation file and the reason,
never dropped silently. Boxes marked ``difficult`` (VOC) or ``iscrowd`` (COCO) are ignore regions, as
in those benchmarks' own scoring: not cut as crops (listed in ``skipped`` with that reason), and kept in the
index's ``ignore`` column (JSON: [label, x, y, w, h] per region of the photo) so that scoring scenes neither
credits nor charges a detection there. A photo with no usable face box has no crop, hence no split, and is not
scored (its ignore regions included). Annotations come from strangers: XML is parsed with defusedxml (no entity
expansion, no external entities), and every value is read as data.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass, replace
from pathlib import Path

import pandas as pd
from filelock import FileLock

from maskdet.data.images import (
    MIN_SIDE,
    BadImageError,
    display_path,
    list_image_files,
    load_rgb,
    path_problem,
    skip,
)
from maskdet.data.sources import Scan, require_root
from maskdet.errors import DataError
from maskdet.writing import file_name_part, remove_orphans, temporary_sibling

CROPS_VERSION = 3  # bump when cropping changes, so cached crops are cut again
ANNOTATION_SUFFIXES = {".txt", ".yaml", ".yml", ".names", ".json", ".xml", ".cache"}  # beside the photos, not photos
DEFAULT_MARGIN = 0.5  # the Haar detector's default margin (conf/detector/haar.yaml): the face fills half the crop


@dataclass(frozen=True)
class Box:
    """One annotated face: the photo, the box in its pixels (x, y: top left), the class, and where it was read."""

    photo: Path
    x: float
    y: float
    w: float
    h: float
    label: str
    where: str
    ignore: bool = False  # VOC difficult="1", COCO iscrowd=1: a region scoring ignores, not a face to crop


def _photo(root: Path, folder: Path, name: str, where: str, skipped: list[dict]) -> Path | None:
    """The photo an annotation names, inside ``root``, or None (reported) when it cannot be used."""
    candidates = [folder / name, root / name, root / "images" / name, root / "JPEGImages" / name]
    path = next((Path(os.path.normpath(c)) for c in candidates if c.is_file()), None)
    if path is None:
        skipped.append(skip(root / name, f"{where}: the photo it annotates is missing"))
        return None
    problem = path_problem(path, root)
    if problem:
        skipped.append(skip(path, f"{where}: {problem}"))
        return None
    return path


# ------------------------------------------------------------------------------------------ readers

def parse_voc(root: Path, classes: list[str] | None = None) -> tuple[list[Box], list[dict]]:
    """Pascal VOC: one XML per photo (any ``*.xml`` under root, e.g. ``annotations/``), with ``filename`` and
    ``object`` elements holding ``name`` and ``bndbox`` (xmin, ymin, xmax, ymax in pixels)."""
    from defusedxml import ElementTree
    from defusedxml.common import DefusedXmlException

    boxes, skipped = [], []
    files = sorted(p for p in root.rglob("*.xml") if not any(part.startswith(".") for part in p.relative_to(root).parts))
    if not files:
        raise DataError(f"No Pascal VOC annotations (*.xml) under data.root={root}: data=voc expects one XML file "
                        "per photo (an annotations/ folder beside images/).")
    for xml in files:
        where = display_path(xml)
        problem = path_problem(xml, root, extensions={".xml"})  # a link leading out of the dataset is not read
        if problem:
            skipped.append(skip(xml, f"{where}: {problem}"))
            continue
        try:
            tree = ElementTree.parse(xml)
        except (ElementTree.ParseError, DefusedXmlException, UnicodeDecodeError, ValueError) as err:
            skipped.append(skip(xml, f"{where}: not a readable Pascal VOC XML file ({type(err).__name__}): its "
                                     "boxes are skipped"))
            continue
        name = (tree.findtext("filename") or "").strip()
        if not name:
            skipped.append(skip(xml, f"{where}: no <filename>: its boxes are skipped"))
            continue
        photo = _photo(root, xml.parent, name, where, skipped)
        if photo is None:
            continue
        for k, item in enumerate(tree.iter("object")):
            label = (item.findtext("name") or "").strip()
            values = [item.findtext(f"bndbox/{t}") for t in ("xmin", "ymin", "xmax", "ymax")]
            try:
                x1, y1, x2, y2 = (float(v) for v in values)
            except (TypeError, ValueError):
                skipped.append(skip(photo, f"{where} object {k + 1}: its bndbox {values} is not four numbers"))
                continue
            difficult = (item.findtext("difficult") or "0").strip() == "1"
            boxes.append(Box(photo, x1, y1, x2 - x1, y2 - y1, label, f"{where} object {k + 1}", difficult))
    return _known_classes(boxes, classes, skipped), skipped


def _yolo_names(root: Path, names_file: str | None) -> list[str]:
    """The class names of a YOLO export: ``names_file`` (a classes.txt with one name per line, or a data.yaml
    with ``names`` as a list or an {id: name} mapping), else classes.txt, obj.names or data.yaml under root."""
    import yaml

    candidates = [Path(names_file)] if names_file else [root / "classes.txt", root / "obj.names", root / "data.yaml"]
    if names_file and not candidates[0].is_absolute():
        candidates = [root / names_file]
    path = next((c for c in candidates if c.is_file()), None)
    if path is None:
        raise DataError(f"No YOLO class names found ({', '.join(str(c) for c in candidates)}): set "
                        "data.source.names_file=<classes.txt or data.yaml>.")
    if path.suffix in (".yaml", ".yml"):
        try:
            names = (yaml.safe_load(path.read_text()) or {}).get("names")
        except (yaml.YAMLError, AttributeError, UnicodeDecodeError) as err:
            raise DataError(f"{path} is not a YOLO data.yaml with a names list ({type(err).__name__}).") from None
        if isinstance(names, dict):
            if not all(isinstance(k, int) for k in names):
                raise DataError(f"{path}: names must map class numbers to names, e.g. {{0: with_mask}}.")
            names = [names.get(i) for i in range(max(names) + 1)] if names else []
    else:
        names = [line.strip() for line in path.read_text(errors="replace").splitlines() if line.strip()]
    if not isinstance(names, list) or not names or not all(isinstance(n, str) and n.strip() for n in names):
        raise DataError(f"{path} names no classes (or a class without a name): give one name per class number.")
    return [n.strip() for n in names]


def _yolo_label_files(root: Path, photo: Path) -> list[Path]:
    """Where a photo's YOLO labels may be: ``labels/`` in place of the last ``images/`` of its path below
    ``root`` (Ultralytics' rule), then beside the photo."""
    parts = list(photo.relative_to(root).with_suffix(".txt").parts)
    if "images" in parts[:-1]:
        last = len(parts) - 2 - parts[:-1][::-1].index("images")
        parts[last] = "labels"
    return [root.joinpath(*parts), photo.with_suffix(".txt")]


def parse_yolo(root: Path, names_file: str | None = None, classes: list[str] | None = None) -> tuple[list[Box], list[dict]]:
    """YOLO: a ``.txt`` per photo (``labels/x.txt`` beside ``images/x.jpg``, or beside the photo), one box per
    line: class number, centre x, centre y, width, height, all but the class relative to the photo's size."""
    names = _yolo_names(root, names_file)
    boxes, skipped = [], []
    photos, others = list_image_files(root, root)
    skipped += [o for o in others if Path(o["path"]).suffix.lower() not in ANNOTATION_SUFFIXES]
    if not photos:
        raise DataError(f"No photos under data.root={root}: data=yolo expects images/ and labels/ folders.")
    from PIL import Image

    for photo in photos:
        label_file = next((c for c in _yolo_label_files(root, photo) if c.is_file()), None)
        if label_file is None:
            skipped.append(skip(photo, "no YOLO label file (labels/<name>.txt): the photo has no boxes to crop"))
            continue
        problem = path_problem(label_file, root, extensions={".txt"})
        if problem:
            skipped.append(skip(label_file, f"the photo's YOLO label file: {problem}"))
            continue
        try:
            with Image.open(photo) as image:
                width, height = image.size
        except OSError as err:
            skipped.append(skip(photo, f"cannot be read as an image: {err}"))
            continue
        where_file = display_path(label_file)
        for number, line in enumerate(label_file.read_text(errors="replace").splitlines(), start=1):
            if not line.strip():
                continue
            where = f"{where_file} line {number}"
            parts = line.split()
            try:
                index = int(parts[0])
                cx, cy, w, h = (float(v) for v in parts[1:5])
                if len(parts) < 5:
                    raise ValueError
            except (ValueError, IndexError):
                skipped.append(skip(photo, f"{where}: {line.strip()[:60]!r} is not 'class cx cy w h'"))
                continue
            if not 0 <= index < len(names):
                skipped.append(skip(photo, f"{where}: class number {index} is not among the {len(names)} names"))
                continue
            boxes.append(Box(photo, (cx - w / 2) * width, (cy - h / 2) * height, w * width, h * height, names[index],
                             where))
    return _known_classes(boxes, classes, skipped), skipped


def parse_coco(root: Path, annotations: str | None = None, classes: list[str] | None = None) -> tuple[list[Box], list[dict]]:
    """COCO: one JSON (``annotations``, relative to root; by default the only ``*.json`` under root, so a
    Roboflow export's ``train/_annotations.coco.json`` is found when its folder is the root) with ``images`` (id, file_name), ``categories`` (id, name) and ``annotations`` (image_id, category_id,
    bbox [x, y, width, height] in pixels)."""
    if annotations:
        path = Path(annotations) if Path(annotations).is_absolute() else root / annotations
    else:
        found = sorted(root.rglob("*.json"))
        if len(found) != 1:
            raise DataError(f"{len(found)} JSON files under data.root={root}: name the COCO annotations with "
                            "data.source.annotations=<file.json>.")
        path = found[0]
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DataError(f"{path} is not a readable COCO JSON file ({type(err).__name__}).") from None
    if not isinstance(data, dict) or not all(isinstance(data.get(k), list) for k in ("images", "annotations", "categories")):
        raise DataError(f"{path} is not COCO: it needs 'images', 'annotations' and 'categories' lists.")
    # ids are looked up, so only numbers and strings count: a list or object as an id is a stranger's error
    categories = {c["id"]: str(c.get("name", "")).strip() for c in data["categories"]
                  if isinstance(c, dict) and _is_id(c.get("id"))}
    images = {i["id"]: i for i in data["images"] if isinstance(i, dict) and _is_id(i.get("id"))}
    boxes, skipped, photos = [], [], {}
    where_file = display_path(path)
    for k, item in enumerate(data["annotations"]):
        where = f"{where_file} annotation {k + 1}"
        if not isinstance(item, dict):
            skipped.append(skip(path, f"{where}: not an object"))
            continue
        image = images.get(item.get("image_id")) if _is_id(item.get("image_id")) else None
        if image is None or not isinstance(image.get("file_name"), str):
            skipped.append(skip(path, f"{where}: image_id {item.get('image_id')!r} is not among the images"))
            continue
        name = image["file_name"]
        if name not in photos:
            photos[name] = _photo(root, path.parent, name, where, skipped)
        if photos[name] is None:
            continue
        label = categories.get(item.get("category_id")) if _is_id(item.get("category_id")) else None
        if not label:
            skipped.append(skip(photos[name], f"{where}: category_id {item.get('category_id')!r} is not among the "
                                              "categories"))
            continue
        bbox = item.get("bbox")
        if not (isinstance(bbox, list) and len(bbox) == 4 and all(isinstance(v, int | float) and not isinstance(v, bool)
                                                                    for v in bbox)):
            skipped.append(skip(photos[name], f"{where}: bbox {repr(bbox)[:60]} is not four numbers"))
            continue
        boxes.append(Box(photos[name], *map(float, bbox), label, where, item.get("iscrowd") in (1, True)))
    return _known_classes(boxes, classes, skipped), skipped


def _is_id(value) -> bool:
    """A COCO id: an int or a string (JSON's 1.0 equals 1 as a key too); lists and objects are not keys."""
    return isinstance(value, int | float | str) and not isinstance(value, bool)


def _known_classes(boxes: list[Box], classes: list[str] | None, skipped: list[dict]) -> list[Box]:
    """The boxes of ``classes`` (all named classes when None); the others reported as unknown."""
    kept = []
    for box in boxes:
        if not box.label or (classes is not None and box.label not in classes):
            wanted = f" (data.source.classes: {', '.join(classes)})" if classes is not None else ""
            skipped.append(skip(box.photo, f"{box.where}: class {box.label[:40]!r} is unknown{wanted}; the box is skipped"))
        else:
            kept.append(box)
    return kept


# ------------------------------------------------------------------------------------------ cropping

def usable_box(box: Box, width: int, height: int, min_side: int = MIN_SIDE) -> tuple[Box | None, str | None]:
    """``box`` clipped to the photo, or the reason it cannot be used."""
    values = (box.x, box.y, box.w, box.h)
    if not all(math.isfinite(v) for v in values):
        return None, f"the box {values} is not finite"
    if box.w <= 0 or box.h <= 0:
        return None, f"the box is empty or inverted ({box.w:g} x {box.h:g} px)"
    x1, y1 = max(box.x, 0.0), max(box.y, 0.0)
    x2, y2 = min(box.x + box.w, width), min(box.y + box.h, height)
    if x2 <= x1 or y2 <= y1:
        return None, f"the box ({box.x:g}, {box.y:g}, {box.w:g} x {box.h:g}) lies outside the {width}x{height} photo"
    if min(x2 - x1, y2 - y1) < min_side:
        return None, f"the box is {x2 - x1:.0f}x{y2 - y1:.0f} px inside the photo, below the {min_side} px minimum"
    return replace(box, x=x1, y=y1, w=x2 - x1, h=y2 - y1), None


def _key(layout: str, boxes: list[Box], margin: float) -> str:
    """The crops' cache key: layout, margin, every box and every photo's size and modification time."""
    digest = hashlib.sha256(json.dumps({"v": CROPS_VERSION, "layout": layout, "margin": margin}).encode())
    stats = {}
    for box in boxes:
        if box.photo not in stats:
            st = box.photo.stat()
            stats[box.photo] = f"{st.st_size}:{st.st_mtime_ns}"
        digest.update(f"{box.photo}\t{stats[box.photo]}\t{box.x}\t{box.y}\t{box.w}\t{box.h}\t{box.label}\t{box.ignore}\n"
                      .encode())
    return digest.hexdigest()[:16]


def crop_boxes(layout: str, root: Path, boxes: list[Box], skipped: list[dict], cache_dir, margin: float) -> pd.DataFrame:
    """The index of the boxes' crops (cut once, then read from the cache): path, label_name, demographics
    unknown, ``group`` and ``photo`` (the source photo), the box; unusable boxes and photos go to ``skipped``."""
    folder = Path(cache_dir).expanduser().resolve() / "scene_crops" / _key(layout, boxes, margin)
    listing = folder / "crops.json"
    if not listing.is_file():
        folder.parent.mkdir(parents=True, exist_ok=True)
        remove_orphans(folder.parent)  # what interrupted cuts left behind
        with FileLock(f"{folder}.lock"):
            if not listing.is_file():
                _cut(root, boxes, folder, margin)
    record = json.loads(listing.read_text())
    skipped += record["skipped"]
    ignored: dict[str, list] = {}
    for region in record["ignore"]:
        ignored.setdefault(region["photo"], []).append([region["label"], *region["box"]])
    rows = [{"path": str(folder / r["crop"]), "label_name": r["label"], "age": None, "gender": None, "race": None,
             "group": r["photo"], "photo": r["photo"], "box": ",".join(f"{v:.1f}" for v in r["box"]),
             "ignore": json.dumps(ignored.get(r["photo"], []))}
            for r in record["crops"]]
    return pd.DataFrame(rows, columns=["path", "label_name", "age", "gender", "race", "group", "photo", "box", "ignore"])


def _cut(root: Path, boxes: list[Box], folder: Path, margin: float) -> None:
    """Cut every box of every photo into a temporary folder, renamed into place when complete."""
    from maskdet.detect import Face, crop_box

    crops, refused, ignored = [], [], []
    with temporary_sibling(folder) as tmp:
        by_photo: dict[Path, list[Box]] = {}
        for box in boxes:
            by_photo.setdefault(box.photo, []).append(box)
        # numbered, so that names the sanitising makes equal ("with mask", "with_mask") stay apart
        folders = {label: f"{i:02d}_{file_name_part(label, 60)}" for i, label in enumerate(sorted({b.label for b in boxes}))}
        for photo_number, (photo, photo_boxes) in enumerate(by_photo.items()):
            try:
                image = load_rgb(photo)
            except BadImageError as err:
                refused.append(skip(photo, f"{photo_boxes[0].where}: the photo {err}; its {len(photo_boxes)} boxes are skipped"))
                continue
            for number, box in enumerate(photo_boxes):
                usable, problem = usable_box(box, image.width, image.height, min_side=1 if box.ignore else MIN_SIDE)
                if problem:
                    refused.append(skip(photo, f"{box.where}: {problem}; the box is skipped"))
                    continue
                if box.ignore:  # PASCAL VOC's and COCO's rule: neither a face to learn nor one to find
                    refused.append(skip(photo, f"{box.where}: marked difficult (VOC) or iscrowd (COCO): not cut as a "
                                               "crop; scoring scenes neither credits nor charges a detection there"))
                    ignored.append({"photo": str(photo.relative_to(root)), "label": box.label,
                                    "box": [usable.x, usable.y, usable.w, usable.h]})
                    continue
                face = Face(round(usable.x), round(usable.y), max(1, round(usable.w)), max(1, round(usable.h)), 1.0)
                crop = image.crop(crop_box(face, image.width, image.height, margin))
                stem = file_name_part("_".join(photo.relative_to(root).with_suffix("").parts), 60)
                name = f"{folders[box.label]}/{photo_number:06d}_{stem}_{number}.png"
                (tmp / folders[box.label]).mkdir(exist_ok=True)
                crop.save(tmp / name)
                crops.append({"crop": name, "label": box.label, "photo": str(photo.relative_to(root)),
                              "box": [usable.x, usable.y, usable.w, usable.h]})
        (tmp / "crops.json").write_text(json.dumps({"crops": crops, "skipped": refused, "ignore": ignored}))


def _scan(layout: str, root, cache_dir, margin: float, parse) -> Scan:
    if isinstance(margin, bool) or not isinstance(margin, int | float) or not 0 <= margin <= 2:
        raise DataError(f"data.source.margin={margin!r} must be a number from 0 to 2 (the crop's side is "
                        "1 + 2 x margin times the box's; 0.5 frames faces as predict detect=true with Haar does).")
    root = require_root(root, f"{layout} scene dataset (photos with face boxes)")
    boxes, skipped = parse(root)
    if not boxes:
        raise DataError(f"No usable face boxes under data.root={root} (data={layout}): "
                        f"{'; '.join(s['reason'] for s in skipped[:3]) or 'no annotations found'}.")
    index = crop_boxes(layout, root, boxes, skipped, cache_dir, float(margin))
    return Scan(index, skipped, str(root))


def read_voc(root, cache_dir, margin: float = DEFAULT_MARGIN, classes: list[str] | None = None) -> Scan:
    """Pascal VOC XML boxes (``data=voc``): each box a face crop, grouped by its photo."""
    return _scan("voc", root, cache_dir, margin, lambda r: parse_voc(r, _classes(classes)))


def read_yolo(root, cache_dir, margin: float = DEFAULT_MARGIN, names_file: str | None = None,
              classes: list[str] | None = None) -> Scan:
    """YOLO txt boxes with a class names file (``data=yolo``): each box a face crop, grouped by its photo."""
    return _scan("yolo", root, cache_dir, margin, lambda r: parse_yolo(r, names_file, _classes(classes)))


def read_coco(root, cache_dir, margin: float = DEFAULT_MARGIN, annotations: str | None = None,
              classes: list[str] | None = None) -> Scan:
    """COCO JSON boxes (``data=coco``): each box a face crop, grouped by its photo."""
    return _scan("coco", root, cache_dir, margin, lambda r: parse_coco(r, annotations, _classes(classes)))


def _classes(classes) -> list[str] | None:
    if classes is None:
        return None
    if isinstance(classes, str) or not all(isinstance(c, str) for c in classes):
        raise DataError(f"data.source.classes={classes!r} must be a list of class names, e.g. [with_mask, without_mask], "
                        "or null for every class the annotations name.")
    return list(classes)
