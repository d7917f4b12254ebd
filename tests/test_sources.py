"""Readers and the bad-input contract: every refused file is reported with its reason."""

import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from maskdet.data import MaskDataModule
from maskdet.data.images import BadImageError, load_rgb
from maskdet.data.sources import Scan, read_class_folders, read_manifest, read_roboflow, scan
from maskdet.errors import DataError
from tests.conftest import REPO, cli_env
from tests.helpers import commands
from tests.helpers.data import report_of, settings


def face(path: Path, mode="RGB", size=(40, 40), colour=(200, 120, 90), fmt=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(zlib.crc32(path.name.encode()))  # the same pixels in every run
    pixels = np.clip(np.array(colour) + rng.normal(0, 30, (size[1], size[0], 3)), 0, 255).astype(np.uint8)
    Image.fromarray(pixels).convert(mode).save(path, format=fmt)
    return path


def make_folder_dataset(root: Path, classes=("cat_a", "cat_b", "cat_c"), per_class=20) -> Path:
    for k, name in enumerate(classes):
        for n in range(per_class):
            face(root / name / f"{20 + n}_{n % 2}_{n % 5}_20170101000000{n:03d}.jpg", colour=(60 * k + 40, 100, 150))
    return root


def png_bomb(path: Path, side=20_000):
    """A tiny PNG whose header claims side x side pixels (decompression bomb)."""
    raw = zlib.compress(b"\x00" * (side + 1) * 8)
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", raw) + chunk(b"IEND", b""))
    return path


def test_folder_reader_finds_any_class_names(tmp_path):
    root = make_folder_dataset(tmp_path / "d")
    scan = read_class_folders(root)
    assert sorted(scan.index["label_name"].unique()) == ["cat_a", "cat_b", "cat_c"]
    assert len(scan.index) == 60 and scan.skipped == []
    assert set(scan.index["gender"]) == {"male", "female"}


@pytest.mark.parametrize("mode", ["L", "CMYK", "RGBA", "P", "I;16"])
def test_unusual_modes_convert_to_rgb(tmp_path, mode):
    path = tmp_path / f"x_{mode.replace(';', '')}.{'tif' if mode in ('CMYK', 'I;16') else 'png'}"
    if mode == "I;16":
        Image.fromarray((np.arange(40 * 40).reshape(40, 40) * 40).astype(np.uint16)).save(path)
    else:
        face(path, mode=mode)
    img = load_rgb(path)
    assert img.mode == "RGB" and img.size == (40, 40)
    if mode == "I;16":
        assert np.asarray(img).max() > 200  # scaled from 16 bit, not clipped to black/white


def test_bad_files_are_skipped_and_reported_with_reasons(tmp_path, cache_dir):
    root = make_folder_dataset(tmp_path / "d", classes=("with_mask", "without_mask"), per_class=20)
    bad = root / "with_mask"
    (bad / "zero.jpg").write_bytes(b"")
    (bad / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not really a jpeg" * 3)
    good = (root / "without_mask").glob("*.jpg").__next__().read_bytes()
    (bad / "truncated.jpg").write_bytes(good[: len(good) // 2])
    (bad / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    (bad / "notes.txt").write_text("labels are in the folder names")
    face(bad / "tiny.png", size=(1, 1))
    png_bomb(bad / "bomb.png")
    face(bad / "gray.png", mode="L")
    face(bad / "cmyk.jpg", mode="CMYK")
    face(bad / "rgba.png", mode="RGBA")
    face(bad / "palette.png", mode="P")

    dm = MaskDataModule(settings(root, cache_dir))
    dm.prepare_data()
    dm.setup()
    reasons = {Path(s["path"]).name: s["reason"] for s in report_of(dm)["skipped"]}
    print(reasons)  # shown when an assertion below fails
    assert "empty file" in reasons["zero.jpg"]
    assert "not a readable image" in reasons["corrupt.jpg"] or "corrupt" in reasons["corrupt.jpg"]
    assert "truncated" in reasons["truncated.jpg"]
    assert "not an image file" in reasons[".DS_Store"] and "not an image file" in reasons["notes.txt"]
    assert "too small" in reasons["tiny.png"]
    assert "decompression bomb" in reasons["bomb.png"]
    used = set(dm.index["path"].map(lambda p: Path(p).name))
    assert {"gray.png", "cmyk.jpg", "rgba.png", "palette.png"} <= used
    assert not set(reasons) & used
    assert len(dm.index) == 40 + 4


def test_same_content_under_two_classes_is_a_reported_conflict(tmp_path, cache_dir):
    root = make_folder_dataset(tmp_path / "d", classes=("a", "b"), per_class=20)
    original = sorted((root / "a").glob("*.jpg"))[0]
    shutil.copy(original, root / "b" / "copy_of_a.jpg")
    dm = MaskDataModule(settings(root, cache_dir))
    dm.setup()
    conflicts = [s for s in dm.data.skipped if "label conflict" in s["reason"]]
    assert {Path(s["path"]).name for s in conflicts} == {original.name, "copy_of_a.jpg"}
    assert len(dm.index) == 41 - 2


def test_missing_root_empty_class_and_single_class_are_explained(tmp_path):
    with pytest.raises(DataError, match=r"data.root=.*does not exist"):
        read_class_folders(tmp_path / "nowhere")
    with pytest.raises(DataError, match="data.root is not set"):
        read_class_folders(None)
    root = make_folder_dataset(tmp_path / "d", classes=("a", "b"), per_class=3)
    (root / "c_empty").mkdir()
    with pytest.raises(DataError, match=r"Class folder .*c_empty holds no image files"):
        read_class_folders(root)
    shutil.rmtree(root / "c_empty")
    shutil.rmtree(root / "b")
    with pytest.raises(DataError, match=r"1 class folder\(s\) \(a\); a classifier needs at least two"):
        read_class_folders(root)


def test_roboflow_export_keeps_splits_and_reports_ambiguous_rows(tmp_path, cache_dir):
    root = tmp_path / "rf"
    for split, n in (("train", 20), ("valid", 6), ("test", 6)):
        rows = []
        for i in range(n):
            name = f"img{i}_jpg.rf.{split}{i}.jpg"
            face(root / split / name, colour=(200, 60, 60) if i % 2 else (60, 60, 200))
            rows.append({"filename": name, " mask": i % 2, " no-mask": 1 - i % 2})
        if split == "train":
            face(root / split / "both.jpg")
            face(root / split / "none.jpg")
            rows += [{"filename": "both.jpg", " mask": 1, " no-mask": 1}, {"filename": "none.jpg", " mask": 0, " no-mask": 0}]
        pd.DataFrame(rows).to_csv(root / split / "_classes.csv", index=False)
    scan = read_roboflow(root)
    assert scan.index.groupby("split").size().to_dict() == {"test": 6, "train": 20, "val": 6}
    reasons = {Path(s["path"]).name: s["reason"] for s in scan.skipped}
    assert "several class columns are 1 (mask, no-mask)" in reasons["both.jpg"]
    assert "no class column is 1" in reasons["none.jpg"]
    dm = MaskDataModule(settings(root, cache_dir, read_roboflow, num_folds=10))
    dm.setup()
    assert dm.class_names == ["mask", "no-mask"]
    assert (dm.index.groupby("split").size() == pd.Series({"test": 6, "train": 20, "val": 6})).all()


def test_manifest_reads_demographics_and_refuses_paths_outside_root(tmp_path, cache_dir):
    root = tmp_path / "m"
    rows = []
    for i in range(24):
        face(root / "imgs" / f"p{i}.png", colour=(200, 60, 60) if i % 2 else (60, 60, 200))
        rows.append({"path": f"imgs/p{i}.png", "label": "mask" if i % 2 else "none", "gender": i % 2, "race": "black", "age": 30})
    rows.append({"path": "imgs/missing.png", "label": "mask", "gender": 0, "race": 0, "age": ""})
    pd.DataFrame(rows).to_csv(root / "manifest.csv", index=False)
    scan = read_manifest(root)
    assert len(scan.index) == 24 and set(scan.index["race"]) == {"black"}
    assert set(scan.index["gender"]) == {"male", "female"}
    assert "line 26: file not found" in scan.skipped[0]["reason"]

    (tmp_path / "secret.png").write_bytes(b"x")
    pd.DataFrame(rows[:3] + [{"path": "../secret.png", "label": "mask"}]).to_csv(root / "evil.csv", index=False)
    evil = read_manifest(root, "evil.csv")  # refused like a link out of root in the other readers: skipped
    assert len(evil.index) == 3 and evil.skipped[0]["path"] == str(tmp_path / "secret.png")
    assert "evil.csv line 5: resolves to" in evil.skipped[0]["reason"] and "outside" in evil.skipped[0]["reason"]


def test_binary_label_map_merges_the_mask_kinds(tiny_dataset, cache_dir):
    dm = MaskDataModule(settings(tiny_dataset, cache_dir, label_map="binary"))
    dm.setup()
    assert dm.class_names == ["without_mask", "with_mask"]
    assert dm.index.groupby("label_name").size().to_dict() == {"with_mask": 90, "without_mask": 30}


def test_bad_image_error_names_the_reason(tmp_path):
    (tmp_path / "a.jpg").write_bytes(b"")
    with pytest.raises(BadImageError, match="empty file"):
        load_rgb(tmp_path / "a.jpg")


def _reader_returning(index: pd.DataFrame):
    def read_broken(root):
        return Scan(index, [], str(root))
    return read_broken


@pytest.mark.parametrize("index, says", [
    (pd.DataFrame({"path": ["/x/a.jpg"], "label_name": ["a"]}), r"without the column\(s\) \['age', 'gender', 'race'\]"),
    (pd.DataFrame({"path": ["a.jpg"], "label_name": ["a"], "age": [None], "gender": [None], "race": [None]}),
     r"1 relative path\(s\), e.g. 'a.jpg'"),
    (pd.DataFrame({"path": ["/x/a.jpg"], "label_name": ["a"], "age": [None], "gender": [None], "race": [None],
                   "split": ["valid"]}), r"split value\(s\) \['valid'\]: use train, val or test"),
    (pd.DataFrame({"path": ["/x/a.jpg", "/x/b.jpg"], "label_name": ["a", "b"], "age": [None] * 2, "gender": [None] * 2,
                   "race": [None] * 2, "split": ["test", None]}), "fixes the split of 1 of 2 images"),
])
def test_a_reader_that_breaks_the_index_contract_is_named(index, says, tmp_path):
    """A new layout's mistakes are refused where the reader returns, naming it, not found downstream."""
    with pytest.raises(DataError, match=r"data.source \((tests\.)?test_sources.broken\) .*" + says):
        scan(_reader_returning(index), tmp_path, tmp_path)
    with pytest.raises(DataError, match=r"returned DataFrame, not a maskdet.data.sources.Scan"):
        scan(lambda root: index, tmp_path, tmp_path)


def test_manifest_listing_one_file_twice_with_different_values_is_refused(tmp_path, caplog):
    root = tmp_path / "m"
    for i in range(4):
        face(root / f"p{i}.png")
    rows = [{"path": f"p{i}.png", "label": "mask" if i % 2 else "none", "split": "train"} for i in range(4)]
    pd.DataFrame(rows + [{"path": "p1.png", "label": "mask", "split": "test"}]).to_csv(root / "two.csv", index=False)
    with pytest.raises(DataError, match=r"two.csv lists .*p1.png twice with different values \(split 'train' and "
                                        r"'test'\).*Keep one row"):
        read_manifest(root, "two.csv")
    pd.DataFrame(rows + [{"path": "./p1.png", "label": "none", "split": "train"}]).to_csv(root / "relabel.csv", index=False)
    with pytest.raises(DataError, match="label 'mask' and 'none'"):
        read_manifest(root, "relabel.csv")
    pd.DataFrame(rows + [rows[1]]).to_csv(root / "same.csv", index=False)  # identical rows: one image, a warning
    assert read_manifest(root, "same.csv").index["path"].is_unique
    assert "lists 1 file(s) more than once with the same values" in caplog.text


def _data_command(root: Path, tmp_path: Path, cache_dir: Path, report: str) -> subprocess.CompletedProcess:
    return commands.run([sys.executable, "-m", "maskdet.data", "data=folder", f"data.root={root}",
                           f"hydra.run.dir={tmp_path}/{report}"], cwd=REPO, env=cli_env(cache_dir, tmp_path),
                          capture_output=True, text=True, timeout=300)


def test_a_dataset_without_usable_images_names_the_reasons(tmp_path, cache_dir):
    root = tmp_path / "faces"
    for name in ("with_mask", "without_mask"):
        for n in range(5):
            (root / name).mkdir(parents=True, exist_ok=True)
            (root / name / f"note{n}.jpg").write_text("not a picture")
    (root / "with_mask" / "empty.jpg").write_bytes(b"")
    result = _data_command(root, tmp_path, cache_dir, "none")
    assert result.returncode != 0 and "Traceback" not in result.stderr
    message = result.stderr[result.stderr.index("maskdet: No usable images found"):]
    assert "11 file(s) refused: 10 x " in message and "1 x " in message
    assert "with_mask/note0.jpg" in message and "with_mask/empty.jpg" in message
    assert "without_mask/note4.jpg" not in message  # the first three of a reason, not all

    (root / "with_mask" / "empty.jpg").unlink()
    for n in range(6):
        face(root / "without_mask" / f"ok{n}.jpg")
    result = _data_command(root, tmp_path, cache_dir, "one")
    assert result.returncode != 0
    assert "maskdet: Only one class (without_mask)" in result.stderr, result.stderr[-2000:]
    message = result.stderr[result.stderr.index("maskdet: Only one class (without_mask)"):]
    assert "Refused: 10 file(s) refused: 10 x " in message and "with_mask/note0.jpg" in message
