"""Scenes scored end to end: detection plus classification over a scene dataset's test photos.

A scene dataset (``data=voc|yolo|coco``, ``maskdet.data.scene_boxes``) knows every face's box in its photos.
``maskdet-evaluate`` on one runs what ``predict detect=true`` runs on each test photo (the detector, then the
classifier on every face found, ``maskdet.detect.analyse``) and scores it against the annotated boxes:

* face recall and precision at IoU >= ``iou`` (each annotated box matched to at most one detection,
  greedily by detector score), with Wilson 95 % intervals over the boxes / detections; a detection left
  unmatched that lies mostly (half its area or more) inside an ignore region (VOC ``difficult``, COCO
  ``iscrowd``) counts neither way, and mAP gets those regions as COCO crowd boxes (``iscrowd``). That is
  COCO's crowd rule, applied to VOC's difficult boxes too: a small false box inside a large difficult one
  is excused here where VOC's own scoring (IoU with the difficult box) would count it;
* per-class AP and mAP at IoU 0.5 (torchmetrics ``MeanAveragePrecision``): each detection is one box of its
  predicted class, ranked by the classifier's confidence in that class;
* the classification confusion on matched boxes (annotated class x predicted class);
* the masked share of the photos' faces: true (annotated boxes) against estimated (the faces found);
* recall per demographic group where the data has the columns (scene sets usually do not: then said);
* a gallery of missed masked faces (annotated, not detected).

Written as ``scenes.json`` / ``scenes.md`` / ``scenes_confusion.csv`` / ``scenes_missed.png``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch

from maskdet.data.demographics import UNKNOWN
from maskdet.data.images import BadImageError, load_rgb
from maskdet.detect import UNMASKED
from maskdet.evaluation.statistics import wilson_interval
from maskdet.jsonfile import write_json
from maskdet.writing import md, write_csv, write_text


def require_map_backend() -> None:
    """Refuse scene scoring without pycocotools, torchmetrics' mAP backend (which imports it only when it
    computes): said before any work, not after the test."""
    from maskdet.detect import INSTALL
    from maskdet.errors import ConfigError

    try:
        import pycocotools  # noqa: F401
    except ImportError:
        raise ConfigError(f"Scoring scenes (mAP) needs pycocotools, part of the detect extra: {INSTALL}.") from None


def is_scene_data(index: pd.DataFrame) -> bool:
    """Whether the index comes from a scene layout (its crops know their photo and box)."""
    return {"photo", "box"} <= set(index.columns)


def match(truth: list[tuple], found: list[tuple], scores: list[float], threshold: float) -> list[tuple[int, int]]:
    """(truth index, detection index) pairs: detections in order of score, each to the unmatched annotated box
    it overlaps most, when that overlap reaches ``threshold`` (the PASCAL VOC rule)."""
    from torchvision.ops import box_iou

    if not len(truth) or not len(found):
        return []
    overlap = box_iou(_xyxy(truth), _xyxy(found)).numpy()  # truth x detections
    pairs = []
    for d in np.argsort(scores, kind="stable")[::-1]:
        column = overlap[:, d]
        best = int(column.argmax())
        if column[best] >= threshold:
            overlap[best, :] = -1.0  # this annotated box is taken
            pairs.append((best, int(d)))
    return pairs


def score_scenes(model, detector, index: pd.DataFrame, root: str | Path, class_names: list[str],
                 split: str = "test", iou: float = 0.5, batch_size: int = 64) -> dict:
    """Detect and classify every photo of ``split`` and score it against its annotated boxes (module docstring)."""
    from torchmetrics.detection import MeanAveragePrecision

    from maskdet.detect import analyse

    require_map_backend()

    part = index[index["split"] == split]
    names = list(class_names)
    metric = MeanAveragePrecision(iou_type="bbox", class_metrics=True, iou_thresholds=[0.5])
    truth_rows, detections, masked_detections, missed, unreadable, ignored_detections = [], 0, 0, [], [], 0
    for photo, faces in part.groupby("photo", sort=True):
        try:
            rgb = np.asarray(load_rgb(Path(root) / photo))
        except BadImageError as err:
            unreadable.append(f"{photo}: {err}")
            continue
        boxes = [tuple(float(v) for v in b.split(",")) for b in faces["box"]]
        result = analyse(model, detector, rgb, batch_size, what=str(photo))
        found = [(f.x, f.y, f.w, f.h) for f in result.faces]
        probs = np.asarray(result.probs)  # N x classes, (0, classes) when no face was found
        predicted = probs.argmax(1)
        pairs = dict(match(boxes, found, [f.score for f in result.faces], iou))
        regions = _ignore_regions(faces)
        kept = [d for d in range(len(found)) if d in pairs.values() or not _inside_region(found[d], regions)]
        regions = [(names.index(label), box) for label, box in regions if label in names]  # mAP: the model's classes
        ignored_detections += len(found) - len(kept)
        detections += len(kept)
        masked_detections += int(sum(names[predicted[d]] != UNMASKED for d in kept))
        for i, (row, box) in enumerate(zip(faces.itertuples(), boxes)):
            d = pairs.get(i)
            truth_rows.append({"photo": photo, "label": row.label_name, "found": d is not None,
                               "predicted": names[predicted[d]] if d is not None else None,
                               **{c: getattr(row, c) for c in ("gender", "race", "age_group") if hasattr(row, c)}})
            if d is None and row.label_name != UNMASKED:
                missed.append((_missed_crop(rgb, box, detector.margin), row.label_name))
        labels = [names.index(lab) for lab in faces["label_name"]] + [label for label, _ in regions]
        metric.update([{"boxes": _xyxy(found), "scores": torch.tensor(probs.max(1), dtype=torch.float32),
                        "labels": torch.tensor(predicted, dtype=torch.long)}],
                      [{"boxes": _xyxy(boxes + [box for _, box in regions]), "labels": torch.tensor(labels, dtype=torch.long),
                        "iscrowd": torch.tensor([0] * len(boxes) + [1] * len(regions), dtype=torch.long)}])
    truth = pd.DataFrame(truth_rows)
    if truth.empty:
        raise ValueError(f"no {split} photo of the scene dataset could be scored")
    matched = int(truth["found"].sum())
    recall_low, recall_high = wilson_interval(matched, len(truth))
    precision_low, precision_high = wilson_interval(matched, detections) if detections else (np.nan, np.nan)
    ap = metric.compute()
    per_class = {names[int(c)]: float(v) for c, v in zip(np.atleast_1d(ap["classes"].numpy()),
                                                         np.atleast_1d(ap["map_per_class"].numpy()))
                 if v >= 0}  # torchmetrics' -1: a class with no annotated face among the test photos, no AP
    has_unmasked = UNMASKED in names  # a checkpoint with other class names has no notion of "masked" (as frames.csv)
    estimated_masked = masked_detections / detections if detections and has_unmasked else None
    confusion = pd.crosstab(truth.loc[truth["found"], "label"], truth.loc[truth["found"], "predicted"]) \
        .reindex(index=names, columns=names, fill_value=0) if matched else pd.DataFrame(0, index=names, columns=names)
    return {"split": split, "photos": int(truth["photo"].nunique()), "faces": len(truth), "detections": detections,
            "matched": matched, "iou": iou, "detections_in_ignore_regions": ignored_detections,
            "recall": matched / len(truth), "recall_low": recall_low, "recall_high": recall_high,
            "precision": matched / detections if detections else np.nan, "precision_low": precision_low,
            "precision_high": precision_high, "map_50": float(ap["map_50"]), "ap_per_class": per_class,
            "true_masked_share": float((truth["label"] != UNMASKED).mean()) if has_unmasked else None,
            "estimated_masked_share": estimated_masked,
            "recall_by_group": recall_by_group(truth), "unreadable": unreadable,
            "confusion": confusion, "missed": missed}


def _ignore_regions(faces: pd.DataFrame) -> list[tuple[str, tuple]]:
    """The photo's ignore regions as (class name, (x, y, w, h)) (maskdet.data.scene_boxes' ``ignore`` column)."""
    if "ignore" not in faces.columns or not isinstance(faces["ignore"].iloc[0], str):
        return []
    import json

    return [(label, tuple(float(v) for v in box)) for label, *box in json.loads(faces["ignore"].iloc[0])]


def _inside_region(box: tuple, regions: list[tuple[str, tuple]], share: float = 0.5) -> bool:
    """Whether ``share`` or more of ``box``'s area lies inside one ignore region (COCO's crowd overlap: the
    intersection over the detection's own area)."""
    from maskdet.detect import share_inside

    if not regions:
        return False
    return bool(share_inside(_xyxy([box]), _xyxy([r for _, r in regions])).max() >= share)


def _missed_crop(rgb: np.ndarray, box: tuple, margin: float, side: int = 96) -> np.ndarray:
    """A missed face cut as predict cuts a found one (``detect.face_crops``), at ``side`` px: the report keeps
    crops, not whole photos."""
    from PIL import Image

    from maskdet.detect import Face, face_crops

    x, y, w, h = box
    face = Face(round(x), round(y), max(1, round(w)), max(1, round(h)), 1.0)
    return face_crops(Image.fromarray(rgb), [face], side, margin)[0]


def _xyxy(boxes) -> torch.Tensor:
    if not len(boxes):
        return torch.zeros((0, 4), dtype=torch.float32)
    b = torch.tensor(boxes, dtype=torch.float32)
    return torch.cat([b[:, :2], b[:, :2] + b[:, 2:]], dim=1)


def recall_by_group(truth: pd.DataFrame) -> list[dict]:
    """Face recall per demographic group with a Wilson 95 % interval, for the columns the data fills."""
    rows = []
    for column in ("gender", "race", "age_group"):
        if column not in truth.columns or (truth[column].astype(str) == UNKNOWN).all():
            continue
        for group, part in truth.groupby(column):
            low, high = wilson_interval(int(part["found"].sum()), len(part))
            rows.append({"attribute": column, "group": str(group), "faces": len(part),
                         "recall": float(part["found"].mean()), "recall_low": low, "recall_high": high})
    return rows


def format_markdown(report: dict, class_names: list[str]) -> str:
    pct = lambda v: "–" if v is None or (isinstance(v, float) and np.isnan(v)) else f"{v:.3f}"  # noqa: E731
    lines = ["# Scenes scored end to end (detection + classification)", "",
             f"{report['photos']} {report['split']} photos, {report['faces']} annotated faces, {report['detections']} "
             f"detections; a face is found at IoU >= {report['iou']:g} (each box matched once, best score first); "
             f"{report['detections_in_ignore_regions']} more detections fell inside ignore regions (VOC difficult, COCO "
             "iscrowd) and count neither way.", "",
             f"- face recall {pct(report['recall'])} [95 % Wilson {pct(report['recall_low'])}, {pct(report['recall_high'])}]",
             f"- face precision {pct(report['precision'])} [95 % Wilson {pct(report['precision_low'])}, "
             f"{pct(report['precision_high'])}]",
             f"- mAP@0.5 {pct(report['map_50'])} (torchmetrics MeanAveragePrecision; each detection one box of its "
             "predicted class, ranked by the classifier's confidence); per class: "
             + ", ".join(f"{md(k)} {pct(v)}" for k, v in report["ap_per_class"].items()),
             f"- masked share: true {pct(report['true_masked_share'])} (annotated faces), estimated "
             f"{pct(report['estimated_masked_share'])} (among all detections, as predict's frames.csv counts them); "
             "the faces a detector misses are not counted, so the estimate leans towards the faces it finds", "",
             "## Confusion on matched faces (annotated class x predicted class)", "",
             "| annotated \\ predicted | " + " | ".join(md(c) for c in class_names) + " |",
             "|---|" + "---|" * len(class_names)]
    for name, row in report["confusion"].iterrows():
        lines.append(f"| {md(name)} | " + " | ".join(str(int(v)) for v in row) + " |")
    lines += ["", "## Recall per demographic group", ""]
    if report["recall_by_group"]:
        lines += ["| attribute | group | faces | recall [95 % Wilson] |", "|---|---|---|---|"]
        lines += [f"| {md(r['attribute'])} | {md(r['group'])} | {r['faces']} | {pct(r['recall'])} "
                  f"[{pct(r['recall_low'])}, {pct(r['recall_high'])}] |" for r in report["recall_by_group"]]
    else:
        lines.append("The dataset has no demographic columns for its faces: no recall per group.")
    if report["unreadable"]:
        lines += ["", "Photos that could not be read: " + "; ".join(md(u) for u in report["unreadable"])]
    return "\n".join(lines) + "\n"


def write_scene_report(model, detector, index: pd.DataFrame, root, class_names: list[str], folder: str | Path,
                       iou: float = 0.5, gallery_size: int = 24) -> dict:
    """Score the test photos (``score_scenes``) and write scenes.json / .md, scenes_confusion.csv and
    scenes_missed.png (up to ``gallery_size`` missed masked faces)."""
    import matplotlib.pyplot as plt

    from maskdet.evaluation.explain import gallery

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    report = score_scenes(model, detector, index, root, class_names, iou=iou)
    write_csv(report["confusion"].rename_axis("annotated").reset_index(), folder / "scenes_confusion.csv")
    write_text(folder / "scenes.md", format_markdown(report, class_names))
    crops, rows = [], []
    for crop, label in report["missed"][:gallery_size]:
        crops.append(torch.from_numpy(crop.copy()).permute(2, 0, 1).float() / 255)
        rows.append({"label": label, "prediction": "not detected", "confidence": 0.0})
    plt.close(gallery(torch.stack(crops) if crops else torch.zeros(0, 3, 96, 96), pd.DataFrame(rows),
                      f"Missed masked faces ({len(report['missed'])} in all, {len(crops)} shown)", folder / "scenes_missed.png"))
    saved = {k: v for k, v in report.items() if k not in ("confusion", "missed")}
    saved["confusion"] = report["confusion"].to_dict()
    saved["missed_masked_faces"] = len(report["missed"])
    write_json(folder / "scenes.json", saved)
    return saved
