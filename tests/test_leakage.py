"""Leakage: duplicates and groups stay inside one split and fold; the split is a file that can be reused."""

import io
import json
import logging
import shutil
import sys
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image, ImageEnhance, ImageOps

from maskdet.data.duplicates import fingerprint, near_pairs, parse_group_by
from maskdet.data.report import format_report, write_report
from maskdet.data.sources import read_manifest, read_synthetic
from maskdet.data.splits import assign_splits, splits_table
from maskdet.data.synthetic import CLASSES, COMP6721_COUNTS, draw_image, generate, make_spec
from maskdet.errors import ConfigError, DataError
from maskdet.evaluation.leakage import write_leakage_study
from tests.conftest import REPO, cli_env
from tests.helpers import commands
from tests.helpers.data import datamodule, report_of, settings


def _assert_groups_kept_together(split, fold_of, groups):
    frame = pd.DataFrame({"split": split, "fold": fold_of, "group": groups})
    assert (frame.groupby("group")["split"].nunique() == 1).all()
    pool = frame[frame["split"] != "test"]
    assert (pool.groupby("group")["fold"].nunique() == 1).all()


# ------------------------------------------------------------------------------------ split functions
@pytest.mark.parametrize("seed", range(5))
def test_no_group_ever_spans_two_splits_or_two_folds(seed):
    rng = np.random.default_rng(seed)
    sizes = rng.integers(1, 6, 300)  # 300 groups of 1-5 images, labels mixed inside a group
    groups = np.repeat(np.arange(300), sizes)
    labels = rng.integers(0, 4, len(groups))
    for fold in (0, 2):
        split, fold_of = assign_splits(labels, 0.3, 5, fold, seed, groups=groups)
        _assert_groups_kept_together(split, fold_of, groups)
        assert set(np.unique(fold_of[split != "test"])) == set(range(5))
        assert (fold_of[split == "val"] == fold).all()
        assert 0.25 < (split == "test").mean() < 0.35  # 3 of 10 group folds: about 30 %
        for c in range(4):  # stratified: every class near its share of the test split
            assert abs((labels[split == "test"] == c).mean() - (labels == c).mean()) < 0.05


def test_singleton_groups_keep_the_comp6721_split_table():
    labels = np.repeat(np.arange(4), COMP6721_COUNTS)
    ungrouped = assign_splits(labels, 0.3, 10, 0, 0)
    split, fold_of = assign_splits(labels, 0.3, 10, 0, 0, groups=np.arange(len(labels)))
    assert [int(((split == "test") & (labels == c)).sum()) for c in range(4)] == [648, 631, 649, 654]
    assert (split == ungrouped[0]).all() and (fold_of == ungrouped[1]).all()


def test_too_few_groups_are_explained():
    labels = np.tile(np.arange(4), 20)
    with pytest.raises(DataError, match="Only 4 groups"):
        assign_splits(labels, 0.3, 3, 0, 0, groups=np.arange(80) // 20)


def test_bad_group_settings_are_explained(tiny_dataset, cache_dir):
    with pytest.raises(ConfigError, match="data.group_by='source_foto' is unknown"):
        parse_group_by("source_foto")
    with pytest.raises(ConfigError, match="not a valid regular expression"):
        parse_group_by({"regex": "(unclosed"})
    with pytest.raises(ConfigError, match="data.duplicates='maybe'"):
        settings(tiny_dataset, cache_dir, duplicates="maybe")
    with pytest.raises(ConfigError, match="no 'group' column"):
        datamodule(tiny_dataset, cache_dir, group_by="manifest")


# ------------------------------------------------------------------------------------ duplicates
def _save(image, path, **options):
    image.save(path, **options)
    return path


@pytest.fixture(scope="module")
def planted(tiny_dataset, tmp_path_factory):
    """The tiny dataset plus known copies: exact, JPEG quality 40, resized x0.5 and x1.5, brightened x1.1,
    in the same class; and one identical file under another class (a label conflict)."""
    root = tmp_path_factory.mktemp("planted") / "faces"
    shutil.copytree(tiny_dataset, root)
    originals = {c: sorted((root / c).glob("*.jpg")) for c in CLASSES}
    copies = {}
    for k, (kind, make) in enumerate({
        "exact": lambda src, dst: shutil.copyfile(src, dst),
        "jpeg_q40": lambda src, dst: _save(Image.open(src), dst, quality=40),
        "resized_half": lambda src, dst: _save(Image.open(src).resize((32, 32), Image.BILINEAR), dst, quality=90),
        "resized_1.5": lambda src, dst: _save(Image.open(src).resize((96, 96), Image.BICUBIC), dst, quality=90),
        "brighter": lambda src, dst: _save(ImageEnhance.Brightness(Image.open(src)).enhance(1.1), dst, quality=90),
    }.items()):
        source = originals[CLASSES[k % 4]][k]
        target = source.with_name(f"copy_{kind}.jpg")
        make(source, target)
        copies[str(target)] = str(source)
    conflict = originals["without_mask"][10]
    shutil.copyfile(conflict, root / "with_ffp2_mask" / "conflict.jpg")
    return root, copies, str(conflict)


def test_known_copies_are_found_and_unrelated_images_are_not(planted, cache_dir):
    root, copies, conflict = planted
    dm = datamodule(root, cache_dir)
    index = dm.index
    grouped = index[index["dup_group"] >= 0]
    found = {frozenset(part["path"]) for _, part in grouped.groupby("dup_group")}
    assert found == {frozenset(pair) for pair in copies.items()}  # every planted pair; nothing else
    kinds = dict(zip(grouped["path"], grouped["dup_kind"]))
    assert kinds[next(c for c in copies if "exact" in c)] == "exact"
    assert {kinds[c] for c in copies if "exact" not in c} == {"near"}
    assert all(index.loc[index["path"] == c, "duplicate_of"].item() == o for c, o in copies.items())
    _assert_groups_kept_together(index["split"], index["fold"], index["split_group"])
    # identical files under two classes are still refused as label conflicts
    reasons = {s["path"]: s["reason"] for s in dm.data.skipped}
    assert reasons[conflict].startswith("label conflict")
    report = report_of(dm)
    assert report["duplicates"]["groups"] == 5 and report["duplicates"]["groups_crossing_splits"] == 0
    assert "exact group" in format_report(report) and "near group" in format_report(report)


def test_a_second_preparation_reads_the_pairs_found_by_the_first(planted, tmp_path):
    root, copies, _ = planted
    cache = tmp_path / "cache"
    assert report_of(datamodule(root, cache))["duplicates"]["near_groups"] == 4
    [pairs_file] = (cache / "fingerprints").glob("*.pairs-*.npy")  # beside the fingerprints, keyed by content
    assert len(np.load(pairs_file)) == 5  # every planted copy (the exact one is also within the thresholds)
    np.save(pairs_file, np.zeros((0, 2), np.int64))  # forget them: a run that reads the file finds none
    written = pairs_file.stat().st_mtime_ns
    again = report_of(datamodule(root, cache, num_folds=4))  # another fold count: the same dataset, the same pairs
    assert again["duplicates"]["near_groups"] == 0 and again["duplicates"]["exact_groups"] == 1
    assert pairs_file.stat().st_mtime_ns == written  # read, not recomputed
    pairs_file.unlink()  # a missing file is computed again
    assert report_of(datamodule(root, cache))["duplicates"]["near_groups"] == 4
    assert len(np.load(pairs_file)) == 5


def test_drop_keeps_one_copy_and_lists_the_others(planted, cache_dir):
    root, copies, _ = planted
    dm = datamodule(root, cache_dir, duplicates="drop")
    assert not set(copies) & set(dm.index["path"])
    reasons = {s["path"]: s["reason"] for s in dm.data.skipped}
    assert all(reasons[c] == f"duplicate of {o}" for c, o in copies.items())
    assert report_of(dm)["duplicates"]["copies_dropped"] == 5


def test_keep_warns_how_many_groups_cross_splits(tiny_dataset, cache_dir, tmp_path, caplog):
    root = tmp_path / "faces"
    shutil.copytree(tiny_dataset, root)
    for c in CLASSES:  # every image of one class copied: with an image-level split many pairs cross
        for path in sorted((root / c).glob("*.jpg")):
            shutil.copyfile(path, path.with_name(f"copy_{path.name}"))
    with caplog.at_level(logging.WARNING, logger="maskdet.data.datamodule"):
        dm = datamodule(root, cache_dir, duplicates="keep")
    crossing = report_of(dm)["duplicates"]["groups_crossing_splits"]
    assert crossing > 20
    assert f"data.duplicates=keep: {crossing} of 120 duplicate groups cross splits" in caplog.text
    grouped = datamodule(root, cache_dir, duplicates="group")
    assert report_of(grouped)["duplicates"]["groups_crossing_splits"] == 0


TRANSFORMED = {  # the copies augmentation-grown datasets are made of
    "flipped": lambda im: ImageOps.mirror(im),
    "cropped": lambda im: im.crop((3, 3, 61, 61)),  # a centred crop keeping 82 % of the area of a 64 px image
    "rotated": lambda im: im.rotate(8, Image.BILINEAR),
    "grey": lambda im: ImageOps.grayscale(im),
}


def test_flipped_cropped_rotated_and_grey_copies_stay_with_their_original(tiny_dataset, cache_dir, tmp_path):
    root = tmp_path / "faces"
    shutil.copytree(tiny_dataset, root)
    copies = {}
    for k, (kind, make) in enumerate(TRANSFORMED.items()):
        for n in range(3):
            source = sorted((root / CLASSES[(k + n) % 4]).glob("*.jpg"))[5 * k + n]
            target = source.with_name(f"{kind}_{source.name}")
            make(Image.open(source).convert("RGB")).save(target, quality=90)
            copies[str(target)] = str(source)
    dm = datamodule(root, cache_dir)
    group = dict(zip(dm.index["path"], dm.index["split_group"]))
    missed = [c for c, o in copies.items() if group[c] != group[o]]
    assert not missed
    grouped = dm.index[dm.index["dup_group"] >= 0]
    assert set(grouped["path"]) == set(copies) | set(copies.values())  # and nothing else is paired
    assert report_of(dm)["duplicates"]["groups_crossing_splits"] == 0


def test_faces_of_different_people_and_different_photos_are_not_paired():
    from skimage import data as samples

    faces = [Image.fromarray((face * 255).astype(np.uint8)).convert("RGB") for face in samples.lfw_subset()[:100]]
    photos = [Image.fromarray(getattr(samples, name)()).convert("RGB")
              for name in ("astronaut", "coffee", "rocket", "chelsea", "camera", "coins", "horse", "moon")]
    for images in (faces, photos):
        found = [fingerprint(im) for im in images]
        assert len(near_pairs(np.stack([h for h, _ in found]), np.stack([t for _, t in found]))) == 0
    hashes, thumbs = map(np.stack, zip(*[fingerprint(im) for im in photos + [ImageOps.mirror(photos[0]),
                                                                            ImageOps.grayscale(photos[1]).convert("RGB")]]))
    assert near_pairs(hashes, thumbs).tolist() == [[0, 8], [1, 9]]


# ------------------------------------------------------------------------------------ named groups
@pytest.fixture(scope="module")
def shared_faces(tmp_path_factory):
    """Every face drawn under all four mask classes, UTKFace-named like MaskTheFace's output."""
    return generate(make_spec(per_class=24, seed=3, size=64, shared_faces=4), tmp_path_factory.mktemp("shared") / "faces")


def test_shared_faces_share_the_photo_and_differ_in_the_mask():
    spec = make_spec(per_class=4, size=64, shared_faces=4)
    names, pixels = set(), []
    for c in range(4):
        name, data = draw_image(spec, c, 1)
        names.add(name)
        pixels.append(np.asarray(Image.open(io.BytesIO(data)).convert("L"), dtype=float))
    assert len(names) == 1  # one photograph: the same [age]_[gender]_[race]_[datetime]_[n] name
    top = [np.abs(p[:14] - pixels[0][:14]).mean() for p in pixels[1:]]  # background and hair
    bottom = [np.abs(p[36:56] - pixels[0][36:56]).mean() for p in pixels[1:]]  # the mask's place
    assert max(top) < 1 and min(bottom) > 3
    # off by default: the same key (cached dataset) and the same bytes as before the option existed
    assert make_spec().key() == make_spec(shared_faces=1).key() == make_spec(shared_faces=None).key()
    assert draw_image(make_spec(per_class=4), 2, 3) == draw_image(make_spec(per_class=4, shared_faces=1), 2, 3)


def test_source_photo_keeps_each_photograph_in_one_split(shared_faces, cache_dir):
    leaky = datamodule(shared_faces, cache_dir, duplicates="keep")
    photo = leaky.index["path"].str.extract(r"/([^/]+)$")[0]
    test_photos = set(photo[leaky.index["split"] == "test"])
    assert test_photos & set(photo[leaky.index["split"] == "train"])  # the image-level split leaks
    dm = datamodule(shared_faces, cache_dir, group_by="source_photo", duplicates="keep")
    groups = report_of(dm)["split_groups"]
    assert groups["groups_of_several_images"] == 24 and groups["largest"] == 4 and groups["groups_crossing_splits"] == 0
    _assert_groups_kept_together(dm.index["split"], dm.index["fold"], photo)
    assert set(dm.index.loc[dm.index["split"] == "test", "label_name"]) == set(CLASSES)


def test_manifest_and_regex_groups(tiny_dataset, cache_dir, tmp_path):
    paths = sorted(tiny_dataset.rglob("*.jpg"))
    manifest = pd.DataFrame({"path": [str(p.relative_to(tiny_dataset)) for p in paths],
                             "label": [p.parent.name for p in paths],
                             "group": [f"person{i % 17}" for i in range(len(paths))]})
    manifest.to_csv(tmp_path / "manifest.csv", index=False)
    dm = datamodule(tiny_dataset, cache_dir, source=partial(read_manifest, manifest=str(tmp_path / "manifest.csv")), group_by="manifest")
    _assert_groups_kept_together(dm.index["split"], dm.index["fold"], dm.index["group"])
    assert report_of(dm)["split_groups"]["groups_of_several_images"] == 17
    by_age = datamodule(tiny_dataset, cache_dir, group_by={"regex": r"^(\d+)_"})
    age = by_age.index["path"].str.extract(r"/(\d+)_[^/]*$")[0]
    _assert_groups_kept_together(by_age.index["split"], by_age.index["fold"], age)


# ------------------------------------------------------------------------------------ the split as a file
def test_splits_csv_round_trips_through_splits_file(planted, cache_dir, tmp_path):
    root, copies, _ = planted
    dm = datamodule(root, cache_dir, seed=0)
    write_report(report_of(dm), tmp_path, splits_table(dm.data.index, dm.data.root))
    table = pd.read_csv(tmp_path / "splits.csv")
    assert list(table.columns) == ["path", "label", "split", "fold", "group", "duplicate_of", "selected"]
    assert not table["path"].str.startswith("/").any()  # relative to the dataset root: the file travels
    assert table["fold"].isna().tolist() == (table["split"] == "test").tolist()
    copy = next(iter(copies))
    row = table[table["path"] == str(Path(copy).resolve().relative_to(root.resolve()))]
    assert row["duplicate_of"].item() == str(Path(copies[copy]).resolve().relative_to(root.resolve()))
    assert row["group"].notna().item()
    again = datamodule(root, cache_dir, seed=7, splits_file=str(tmp_path / "splits.csv"))
    assert (again.index["split"] == dm.index["split"]).all() and (again.index["fold"] == dm.index["fold"]).all()
    other_fold = datamodule(root, cache_dir, seed=7, fold=2, splits_file=str(tmp_path / "splits.csv"))
    assert (other_fold.index["split"] == "val").sum() == (dm.index["fold"] == 2).sum()
    assert (other_fold.index["split"] == "test").equals(dm.index["split"] == "test")
    table.iloc[1:].to_csv(tmp_path / "short.csv", index=False)
    with pytest.raises(DataError, match=r"does not match the dataset: 1 of its \d+ images are not in the file"):
        datamodule(root, cache_dir, splits_file=str(tmp_path / "short.csv"))


def test_cli_writes_splits_csv(tiny_dataset, cache_dir, tmp_path):
    result = commands.run([sys.executable, "-m", "maskdet.data", "data=folder", f"data.root={tiny_dataset}",
                             "data.num_folds=3", f"hydra.run.dir={tmp_path}/report"], cwd=REPO,
                            env=cli_env(cache_dir, tmp_path), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    table = pd.read_csv(tmp_path / "report" / "splits.csv")
    assert len(table) == 120 and set(table["split"]) == {"train", "val", "test"}
    report = json.loads((tmp_path / "report" / "data_report.json").read_text())
    assert report["duplicates"]["groups"] == 0 and "duplicates (data.duplicates=group): 0 groups" in result.stdout


# ------------------------------------------------------------------------------------ the leakage study
def _job(sweep, name, group_by, correct, n=100):
    job = sweep / name
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "config.yaml").write_text(yaml.safe_dump({"data": {"group_by": group_by, "fold": 0,
                                                                         "duplicates": "keep"}}))
    labels = ["a"] * n
    pd.DataFrame({"label": labels, "prediction": ["a"] * correct + ["b"] * (n - correct)}).to_csv(
        job / "predictions.csv", index=False)


def test_leakage_table_gives_intervals_and_the_inflation(tmp_path):
    _job(tmp_path, "0_group_by=null", None, 90)
    _job(tmp_path, "1_group_by=source_photo", "source_photo", 70)
    text = write_leakage_study(tmp_path)
    assert "| image-level (data.group_by=null) | 0 | 100 | 0.9000 [0.8256, 0.9448] |" in text
    assert "| grouped (data.group_by=source_photo) | 0 | 100 | 0.7000 [0.6042, 0.7811] |" in text
    assert "+0.2000 [" in text and (tmp_path / "leakage_study.csv").is_file()
    shutil.rmtree(tmp_path / "1_group_by=source_photo")
    with pytest.raises(DataError, match="no tested image-level and grouped runs"):
        write_leakage_study(tmp_path)


@pytest.mark.slow
def test_leakage_study_experiment_runs_both_policies(tmp_path, cache_dir):
    result = commands.run([sys.executable, "-m", "maskdet.train", "+experiment=leakage_study",
                             "data.source.per_class=24", "data.source.size=64", "data.num_folds=3",
                             "trainer.max_epochs=1", "~callbacks.progress_bar", "trainer.enable_progress_bar=false"],
                            cwd=REPO, env=cli_env(cache_dir, tmp_path), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    sweep = next((tmp_path / "outputs" / "leakage_study" / "multiruns").iterdir())
    text = (sweep / "leakage_study.md").read_text()
    assert "image-level (data.group_by=null)" in text and "grouped (data.group_by=source_photo)" in text
    grouped = next(sweep.glob("*group_by-source_photo"))
    report = json.loads((grouped / "data_report.json").read_text())
    assert report["split_groups"]["groups_of_several_images"] == 24
    assert report["split_groups"]["groups_crossing_splits"] == 0


@pytest.mark.slow
def test_default_dataset_has_no_duplicates_and_keeps_the_comp6721_table(cache_dir):
    dm = datamodule(None, cache_dir, source=read_synthetic, num_folds=10)
    assert dm.data.leakage["duplicates"]["groups"] == 0  # no exact copies and no false near-duplicates
    test = dm.index[dm.index["split"] == "test"]
    assert test.groupby("label").size().tolist() == [648, 631, 649, 654]
