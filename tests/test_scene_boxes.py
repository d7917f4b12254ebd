"""Scene datasets with face boxes (data=voc, data=yolo, data=coco): real faces composed into photos at known
positions, each box cut into a crop as predict detect=true cuts one, crops grouped by photo, and every
unusable box or file reported with its reason."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image, ImageDraw

from maskdet.data.scene_boxes import read_coco, read_voc, read_yolo
from maskdet.errors import DataError

LABELS = ["with_mask", "without_mask", "mask_weared_incorrect"]


def compose_scenes(n_photos: int = 12, faces_per_photo: int = 3, seed: int = 0):
    """Photos of 320x240 with real LFW faces (scikit-image) enlarged to 56 px at known places on a real
    photograph's texture; a face labelled with_mask gets a filled lower half, mask_weared_incorrect a band
    on the chin. Returns [(photo name, RGB array, [(x, y, w, h, label)])]."""
    from skimage import data

    rng = np.random.default_rng(seed)
    faces = (data.lfw_subset()[:100] * 255).astype(np.uint8)
    texture = data.coffee()
    scenes = []
    for p in range(n_photos):
        top, left = rng.integers(0, texture.shape[0] - 240), rng.integers(0, texture.shape[1] - 320)
        canvas = Image.fromarray(texture[top:top + 240, left:left + 320].copy())
        boxes = []
        for k in range(faces_per_photo):
            face = Image.fromarray(faces[(p * faces_per_photo + k) % 100]).convert("RGB").resize((56, 56), Image.BILINEAR)
            x, y = 10 + k * 100 + int(rng.integers(0, 30)), int(rng.integers(10, 170))
            label = LABELS[(p + k) % 3]
            draw = ImageDraw.Draw(face)
            if label == "with_mask":
                draw.rectangle([6, 30, 50, 54], fill=(90, 160, 210))
            elif label == "mask_weared_incorrect":
                draw.rectangle([6, 46, 50, 56], fill=(90, 160, 210))
            canvas.paste(face, (x, y))
            boxes.append((x, y, 56, 56, label))
        scenes.append((f"scene_{p:02d}.jpg", np.asarray(canvas), boxes))
    return scenes


def write_voc(root, scenes):
    (root / "images").mkdir(parents=True)
    (root / "annotations").mkdir()
    for name, rgb, boxes in scenes:
        Image.fromarray(rgb).save(root / "images" / name, quality=95)
        objects = "".join(f"<object><name>{label}</name><bndbox><xmin>{x}</xmin><ymin>{y}</ymin><xmax>{x + w}</xmax>"
                          f"<ymax>{y + h}</ymax></bndbox></object>" for x, y, w, h, label in boxes)
        (root / "annotations" / name.replace(".jpg", ".xml")).write_text(
            f"<annotation><filename>{name}</filename><size><width>320</width><height>240</height></size>{objects}"
            "</annotation>")
    return root


def write_yolo(root, scenes):
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    (root / "classes.txt").write_text("\n".join(LABELS) + "\n")
    for name, rgb, boxes in scenes:
        Image.fromarray(rgb).save(root / "images" / name, quality=95)
        (root / "labels" / name.replace(".jpg", ".txt")).write_text("".join(
            f"{LABELS.index(label)} {(x + w / 2) / 320:.6f} {(y + h / 2) / 240:.6f} {w / 320:.6f} {h / 240:.6f}\n"
            for x, y, w, h, label in boxes))
    return root


def write_coco(root, scenes):
    (root / "images").mkdir(parents=True)
    images, annotations = [], []
    for i, (name, rgb, boxes) in enumerate(scenes):
        Image.fromarray(rgb).save(root / "images" / name, quality=95)
        images.append({"id": i, "file_name": f"images/{name}", "width": 320, "height": 240})
        annotations += [{"id": len(annotations), "image_id": i, "category_id": LABELS.index(label) + 1,
                         "bbox": [x, y, w, h]} for x, y, w, h, label in boxes]
    (root / "faces.json").write_text(json.dumps({
        "images": images, "annotations": annotations,
        "categories": [{"id": k + 1, "name": n} for k, n in enumerate(LABELS)]}))
    return root


WRITERS = {"voc": (write_voc, read_voc), "yolo": (write_yolo, read_yolo), "coco": (write_coco, read_coco)}


@pytest.mark.parametrize("layout", WRITERS)
def test_every_box_becomes_a_crop_framed_as_predict_frames_a_detected_face(layout, tmp_path, monkeypatch):
    from maskdet.detect import Face, crop_box

    scenes = compose_scenes(n_photos=4)
    write, read = WRITERS[layout]
    scan = read(write(tmp_path / layout, scenes), tmp_path / "cache")
    index = scan.index
    assert len(index) == 12 and not scan.skipped, scan.skipped
    assert sorted(index["label_name"].value_counts().to_dict().items()) == [(n, 4) for n in sorted(LABELS)]
    assert index.groupby("group").size().tolist() == [3, 3, 3, 3]  # three faces per photo, one group each
    # the first face of the first photo, cut by hand with predict's rule, equals the reader's crop
    name, rgb, boxes = scenes[0]
    x, y, w, h, label = boxes[0]
    photo = Image.open(tmp_path / layout / "images" / name).convert("RGB")
    expected = np.asarray(photo.crop(crop_box(Face(x, y, w, h, 1.0), 320, 240, 0.5)), dtype=float)
    row = index[(index["group"].str.endswith(name)) & (index["label_name"] == label)].iloc[0]
    crop = np.asarray(Image.open(row["path"]).convert("RGB"), dtype=float)
    assert crop.shape == expected.shape == (112, 112, 3)
    assert np.abs(crop - expected).mean() < 1.0  # YOLO's relative coordinates round to the same pixel
    listing = Path(row["path"]).parent.parent / "crops.json"
    cut_at = listing.stat().st_mtime_ns
    again = read(tmp_path / layout, tmp_path / "cache")  # read from the cache the second time, not cut again
    assert list(again.index["path"]) == list(index["path"]) and listing.stat().st_mtime_ns == cut_at
    # data.root and the cache folder as a user types them, relative (paths.cache_dir's default is ./.cache/maskdet)
    monkeypatch.chdir(tmp_path)
    relative = read(Path(layout), Path("cache"))
    assert len(relative.index) == 12 and not relative.skipped, relative.skipped
    assert list(relative.index["path"]) == list(index["path"])  # absolute, and the same crops


def test_unusable_boxes_and_files_are_reported_with_their_reasons(tmp_path):
    root = write_voc(tmp_path / "voc", compose_scenes(n_photos=2))
    bad = {
        "outside.xml": "<annotation><filename>scene_00.jpg</filename><object><name>with_mask</name><bndbox><xmin>400"
                       "</xmin><ymin>10</ymin><xmax>450</xmax><ymax>60</ymax></bndbox></object></annotation>",
        "empty.xml": "<annotation><filename>scene_00.jpg</filename><object><name>with_mask</name><bndbox><xmin>40"
                     "</xmin><ymin>10</ymin><xmax>40</xmax><ymax>60</ymax></bndbox></object></annotation>",
        "tiny.xml": "<annotation><filename>scene_00.jpg</filename><object><name>with_mask</name><bndbox><xmin>40"
                    "</xmin><ymin>10</ymin><xmax>43</xmax><ymax>13</ymax></bndbox></object></annotation>",
        "helmet.xml": "<annotation><filename>scene_01.jpg</filename><object><name>helmet</name><bndbox><xmin>40"
                      "</xmin><ymin>10</ymin><xmax>90</xmax><ymax>60</ymax></bndbox></object></annotation>",
        "missing.xml": "<annotation><filename>gone.jpg</filename><object><name>with_mask</name></object></annotation>",
        "text.xml": "<annotation><filename>scene_01.jpg</filename><object><name>with_mask</name><bndbox><xmin>a"
                    "</xmin></bndbox></object></annotation>",
        "broken.xml": "<annotation><filename>",
        "bomb.xml": '<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;">]>'
                    "<annotation><filename>&lol2;</filename></annotation>",
    }
    for name, text in bad.items():
        (root / "annotations" / name).write_text(text)
    scan = read_voc(root, tmp_path / "cache", classes=["with_mask", "without_mask", "mask_weared_incorrect"])
    assert len(scan.index) == 6
    reasons = {s["reason"].split(":")[0].rsplit("/", 1)[-1].split(" ")[0]: s["reason"] for s in scan.skipped}
    assert "lies outside the 320x240 photo" in reasons["outside.xml"]
    assert "empty or inverted" in reasons["empty.xml"]
    assert "below the 8 px minimum" in reasons["tiny.xml"]
    assert "class 'helmet' is unknown" in reasons["helmet.xml"]
    assert "the photo it annotates is missing" in reasons["missing.xml"]
    assert "is not four numbers" in reasons["text.xml"]
    assert "not a readable Pascal VOC XML file (ParseError)" in reasons["broken.xml"]
    assert "not a readable Pascal VOC XML file (EntitiesForbidden)" in reasons["bomb.xml"]  # defusedxml: not expanded


def test_yolo_and_coco_refuse_what_their_files_do_not_name(tmp_path):
    scenes = compose_scenes(n_photos=2)
    yolo = write_yolo(tmp_path / "yolo", scenes)
    (yolo / "labels" / "scene_00.txt").write_text("7 0.5 0.5 0.1 0.1\nnot a box\n0 0.5 0.5 0.2 0.2\n")
    scan = read_yolo(yolo, tmp_path / "cache")
    reasons = " | ".join(s["reason"] for s in scan.skipped)
    assert "class number 7 is not among the 3 names" in reasons and "is not 'class cx cy w h'" in reasons
    assert len(scan.index) == 4 and not any(".txt" in s["path"] for s in scan.skipped if "not an image" in s["reason"])
    coco = write_coco(tmp_path / "coco", scenes)
    data = json.loads((coco / "faces.json").read_text())
    data["annotations"] += [{"image_id": 0, "category_id": 99, "bbox": [1, 1, 50, 50]},
                            {"image_id": 42, "category_id": 1, "bbox": [1, 1, 50, 50]},
                            {"image_id": 0, "category_id": 1, "bbox": "=cmd|' /C calc'!A0"},
                            {"image_id": [0], "category_id": {"id": 1}, "bbox": [1, 1, 50, 50]}]
    data["images"].append({"id": [7], "file_name": "scene_00.png"})  # ids that are lists or objects: data, not keys
    data["categories"].append({"id": {"x": 1}, "name": "with_mask"})
    (coco / "faces.json").write_text(json.dumps(data))
    reasons = " | ".join(s["reason"] for s in read_coco(coco, tmp_path / "cache").skipped)
    assert "category_id 99 is not among the categories" in reasons and "image_id 42 is not among the images" in reasons
    assert "is not four numbers" in reasons and "image_id [0] is not among the images" in reasons
    (coco / "faces.json").write_text("{}")
    with pytest.raises(DataError, match="is not COCO"):
        read_coco(coco, tmp_path / "cache")


@pytest.mark.slow
@pytest.mark.parametrize("layout", WRITERS)
def test_a_scene_set_trains_with_every_photo_inside_one_split_and_one_fold_and_is_scored(layout, tmp_path, cache_dir):
    """VOC, YOLO and COCO alike: trained on, each photo's crops in one split and one fold, then evaluated as
    scenes (detector + classifier over the test photos)."""
    from hydra.utils import instantiate

    from maskdet.data.prepare import prepare
    from maskdet.preflight import check_config
    from maskdet.train import train
    from tests.conftest import compose_train

    root = WRITERS[layout][0](tmp_path / layout, compose_scenes(n_photos=24))
    overrides = [f"data={layout}", f"data.root={root}", "data.num_folds=3", "data.label_map=binary", "trainer.max_epochs=1",
                 "~logger", "callbacks.explanations=null", "bias.n_bootstrap=10"]
    cfg = compose_train(overrides, tmp_path / "run", cache_dir)
    prepared = prepare(instantiate(cfg.data))
    index = prepared.index
    assert set(index["label_name"]) == {"with_mask", "without_mask"}  # mask_weared_incorrect counts as no mask
    per_photo = index.groupby("photo").agg(splits=("split", "nunique"), folds=("fold", "nunique"))
    assert (per_photo["splits"] == 1).all() and (per_photo["folds"] == 1).all()
    assert index["split"].nunique() == 3 and len(per_photo) == 24
    train(cfg)
    assert (tmp_path / "run" / "metrics.json").is_file()
    with pytest.raises(Exception, match="margn"):
        check_config(compose_train([*overrides, "+data.source.margn=0.3"], tmp_path / "bad", cache_dir), "train")
    assert pd.read_csv(tmp_path / "run" / "predictions.csv")["path"].str.contains("scene_crops").all()
    # maskdet-evaluate on the scene set: its test photos through the default detector and the model
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from maskdet.evaluate import evaluate
    from tests.conftest import CONF

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        ev = hydra_compose(config_name="evaluate", overrides=[
            f"ckpt_path={tmp_path / 'run' / 'checkpoints' / 'best.ckpt'}", f"paths.output_dir={tmp_path / 'ev'}",
            f"paths.cache_dir={cache_dir}", "bias.n_bootstrap=10"])
    metrics = evaluate(ev)
    scored = json.loads((tmp_path / "ev" / "scenes" / "scenes.json").read_text())
    assert scored["photos"] == int(index.loc[index["split"] == "test", "photo"].nunique())
    assert 0 <= metrics["scenes"]["recall"] <= 1 and scored["faces"] == int((index["split"] == "test").sum())
    assert (tmp_path / "ev" / "scenes" / "scenes_missed.png").is_file()
    assert "face recall" in (tmp_path / "ev" / "scenes" / "scenes.md").read_text()


class KnownBoxes:
    """A detector that finds exactly the boxes it is given for each photo (by its pixel sum), plus one box where
    there is no face: a real detector object with a known answer, to check the scoring by hand."""

    margin = 0.5

    def __init__(self, per_photo: dict):
        self.per_photo = per_photo

    def detect(self, rgb):
        from maskdet.detect import Face

        boxes = self.per_photo[int(rgb.astype(np.int64).sum())]
        return [Face(int(x), int(y), int(w), int(h), 0.9 - 0.1 * k) for k, (x, y, w, h) in enumerate(boxes)]


def _score_two_found_one_missed_one_false(scenes, root, index) -> dict:
    """score_scenes with a detector that finds the first two faces of each photo exactly and a false box at
    (150, 5), and an untrained three-class model."""
    from maskdet.evaluation.scenes import score_scenes
    from maskdet.models import MaskClassifier

    known = {}
    for name, _, boxes in scenes:
        rgb = np.asarray(Image.open(root / "images" / name).convert("RGB"))
        known[int(rgb.astype(np.int64).sum())] = [b[:4] for b in boxes[:2]] + [(150, 5, 30, 30)]
    names = ["mask_weared_incorrect", "with_mask", "without_mask"]
    model = MaskClassifier("custom_cnn", num_classes=3, class_names=names, image_size=32).eval()
    return score_scenes(model, KnownBoxes(known), index, root, names)


def test_scenes_are_scored_against_their_boxes_by_hand(tmp_path):
    """Each photo: the first two annotated faces found exactly, the third missed, one false box: recall 2/3,
    precision 2/3; masked share true and estimated from the labels; AP per class by torchmetrics."""
    from maskdet.evaluation.scenes import match

    scenes = compose_scenes(n_photos=3)
    root = write_voc(tmp_path / "voc", scenes)
    scan = read_voc(root, tmp_path / "cache")
    index = scan.index.assign(split="test")
    report = _score_two_found_one_missed_one_false(scenes, root, index)
    assert (report["faces"], report["detections"], report["matched"]) == (9, 9, 6)
    assert report["recall"] == pytest.approx(2 / 3) and report["precision"] == pytest.approx(2 / 3)
    assert report["recall_low"] < 2 / 3 < report["recall_high"]
    assert report["true_masked_share"] == pytest.approx(6 / 9)  # with_mask and worn incorrectly count as masked
    assert int(report["confusion"].to_numpy().sum()) == 6 and 0 <= report["map_50"] <= 1
    assert report["ap_per_class"] and set(report["ap_per_class"]) <= set(LABELS)
    assert all(0 <= ap <= 1 for ap in report["ap_per_class"].values())
    assert 0 <= report["estimated_masked_share"] <= 1  # among the 9 detections, from the model's classes
    assert len(report["missed"]) == sum(1 for _, _, boxes in scenes if boxes[2][4] != "without_mask")
    assert report["recall_by_group"] == []  # the photos carry no demographics
    assert match([(0, 0, 10, 10), (50, 50, 10, 10)], [(1, 1, 10, 10), (0, 0, 10, 10)], [0.5, 0.9], 0.5) == [(0, 1)]


def test_difficult_and_crowd_boxes_are_ignore_regions_neither_cropped_nor_charged(tmp_path):
    """VOC difficult="1" and COCO iscrowd=1, the benchmarks' own ignore rule: not cut as crops (reported), and a
    detection inside one is neither a hit nor a false detection; mAP gets them as crowd boxes."""

    scenes = compose_scenes(n_photos=3)
    coco = write_coco(tmp_path / "coco", scenes)
    data = json.loads((coco / "faces.json").read_text())
    data["annotations"].append({"image_id": 1, "category_id": 2, "bbox": [140, 0, 60, 60], "iscrowd": 1})
    (coco / "faces.json").write_text(json.dumps(data))
    crowd = read_coco(coco, tmp_path / "cache")
    assert len(crowd.index) == 9 and any("iscrowd (COCO): not cut as a crop" in s["reason"] for s in crowd.skipped)
    voc = write_voc(tmp_path / "voc", scenes)
    for name, _, _ in scenes:  # every photo gets a difficult face where the detector below puts its extra box
        xml = voc / "annotations" / name.replace(".jpg", ".xml")
        xml.write_text(xml.read_text().replace("</annotation>", "<object><name>without_mask</name><difficult>1"
                       "</difficult><bndbox><xmin>145</xmin><ymin>0</ymin><xmax>185</xmax><ymax>40</ymax></bndbox>"
                       "</object></annotation>"))
    scan = read_voc(voc, tmp_path / "cache")
    assert len(scan.index) == 9 and sum("marked difficult" in s["reason"] for s in scan.skipped) == 3
    assert {json.loads(v)[0][0] for v in scan.index["ignore"]} == {"without_mask"}
    report = _score_two_found_one_missed_one_false(scenes, voc, scan.index.assign(split="test"))
    # as in the test above, but the box at (150, 5) lies inside each photo's ignore region: precision 6/6, not 6/9
    assert (report["faces"], report["detections"], report["matched"]) == (9, 6, 6)
    assert report["detections_in_ignore_regions"] == 3 and report["precision"] == 1.0
    assert all(crop.shape == (96, 96, 3) for crop, _ in report["missed"])  # crops kept, not whole photos
    from maskdet.data.sources import apply_label_map

    mapped = apply_label_map(scan.index, {"with_mask": "mask", "mask_weared_incorrect": "mask", "without_mask": "no_mask"})
    assert {json.loads(v)[0][0] for v in mapped["ignore"]} == {"no_mask"}  # the label map reaches the regions
    xml = voc / "annotations" / "scene_00.xml"
    xml.write_text(xml.read_text().replace("<difficult>1</difficult>", "<difficult>0</difficult>"))
    assert len(read_voc(voc, tmp_path / "cache").index) == 10  # the flag is part of the crops' cache key


def test_class_and_photo_names_from_annotations_cannot_write_outside_the_cache(tmp_path):
    """A class named ``../../escaped`` (annotations are a stranger's text) becomes a numbered, sanitised
    folder inside the crops' cache folder; the label itself is kept as data."""
    root = write_voc(tmp_path / "voc", compose_scenes(n_photos=1))
    xml = root / "annotations" / "scene_00.xml"
    xml.write_text(xml.read_text().replace("<name>with_mask</name>", "<name>../../escaped</name>"))
    scan = read_voc(root, tmp_path / "cache")
    crops = (tmp_path / "cache" / "scene_crops").resolve()
    assert all(Path(p).resolve().is_relative_to(crops) for p in scan.index["path"])
    assert "../../escaped" in set(scan.index["label_name"]) and not list(tmp_path.rglob("escaped"))


def test_scene_scoring_without_its_map_backend_is_refused_with_the_install(monkeypatch):
    """evaluate calls this before the test, so a missing detect extra costs no test pass and no report."""
    import sys

    from maskdet.errors import ConfigError
    from maskdet.evaluation.scenes import require_map_backend

    require_map_backend()  # the dev environment has it
    monkeypatch.setitem(sys.modules, "pycocotools", None)  # as if the detect extra were not installed
    with pytest.raises(ConfigError, match=r"pycocotools, part of the detect extra: pip install 'maskdet\[detect\]'"):
        require_map_backend()
