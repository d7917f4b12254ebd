"""Hostile and messy inputs (issue 11): each is skipped or refused with its reason, in every reader, in the
decoded cache and in predict, and never crashes the run or loses the other files' results.

Every input is a real file built here: EXIF-rotated JPEGs, names that are not UTF-8, dangling links, links
and CSV rows leading out of the dataset, truncated PNGs and JPEGs, broken CSVs, a full (tmpfs) disk.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import struct
import subprocess
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from filelock import FileLock
from omegaconf import OmegaConf
from PIL import Image

from maskdet.data import MaskDataModule, cache
from maskdet.data.images import BadImageError, load_rgb
from maskdet.data.sources import read_class_folders, read_manifest, read_roboflow
from maskdet.data.splits import assign_splits
from maskdet.errors import ConfigError, DataError
from maskdet.inference import list_inputs
from tests.helpers.data import report_of, settings

BAD_NAME = b"bad\xff.jpg"  # not valid UTF-8


# ------------------------------------------------------------------ builders
def image(path: Path, size=(40, 40), seed=0, fmt=None) -> Path:
    """A noisy RGB image (noise keeps PNGs from compressing to nothing)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, format=fmt)
    return path


def rotated_jpeg(path: Path) -> Path:
    """A 40 x 20 JPEG, white on its left quarter, whose EXIF orientation 6 says: turn 90 degrees clockwise
    to show it. Upright it is 20 x 40 with the white part at the top."""
    pixels = np.zeros((20, 40, 3), np.uint8)
    pixels[:, :10] = 255
    exif = Image.Exif()
    exif[0x0112] = 6
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, exif=exif.tobytes(), quality=95)
    return path


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_with_rows(path: Path, width=32, height=32, rows=None, interlaced=False) -> Path:
    """An RGB PNG written by hand; ``rows``: how many rows of image data it really holds (all by default).
    With fewer, the zlib stream is complete but the image data stops early (Pillow shows black rows)."""
    pixels = np.random.default_rng(3).integers(0, 256, (height, width, 3), dtype=np.uint8)
    if interlaced:  # Adam7: seven sub-images, each row led by its filter byte
        passes = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2))
        raw = b"".join(b"\x00" + pixels[y, x0::dx].tobytes()
                       for x0, y0, dx, dy in passes if x0 < width for y in range(y0, height, dy))
    else:
        raw = b"".join(b"\x00" + pixels[y].tobytes() for y in range(rows if rows is not None else height))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 1 if interlaced else 0)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", zlib.compress(raw))
                     + _chunk(b"IEND", b""))
    return path


def bad_name_file(folder: Path, source: Path) -> bytes:
    """Copy ``source`` to a file in ``folder`` whose name is not valid UTF-8; return its path as bytes."""
    path = os.path.join(os.fsencode(folder), BAD_NAME)
    with open(path, "wb") as handle:
        handle.write(source.read_bytes())
    return path


def hostile_class_folders(root: Path, outside: Path) -> Path:
    """Two classes of 8 good images each, plus one of every hostile kind inside class ``a``."""
    for k, name in enumerate(("a", "b")):
        for i in range(8):
            image(root / name / f"{i}.png", seed=10 * k + i)
    a = root / "a"
    rotated_jpeg(a / "rotated.jpg")
    bad_name_file(a, a / "0.png")
    os.mkdir(os.path.join(os.fsencode(a), b"folder\xfe"))
    (a / "dangling.jpg").symlink_to(root / "gone.jpg")
    (a / "escape.png").symlink_to(image(outside / "secret.png", seed=99))
    (a / "inside_link.png").symlink_to(a / "1.png")  # a link that stays inside root is fine
    image(a / ".hidden.png", seed=7)
    image(a / ".thumbs" / "t.png", seed=8)
    (a / "linked_folder").symlink_to(outside, target_is_directory=True)
    png_with_rows(a / "short.png", rows=16)
    good = (a / "rotated.jpg").read_bytes()
    (a / "half.jpg").write_bytes(good[: len(good) // 2])
    return root


def reasons_by_name(skipped: list[dict]) -> dict[str, str]:
    return {Path(s["path"]).name: s["reason"] for s in skipped}


# ------------------------------------------------------------------ decoding
def test_exif_orientation_turns_the_photo_upright(tmp_path):
    img = load_rgb(rotated_jpeg(tmp_path / "r.jpg"))
    pixels = np.asarray(img)
    assert img.size == (20, 40)  # width x height after the quarter turn
    assert pixels[:8].mean() > 240 and pixels[-8:].mean() < 15  # the white quarter is now on top
    assert cache.CACHE_VERSION >= 2  # a changed decode is a new cache key


def test_truncated_png_and_jpeg_are_refused(tmp_path):
    full = image(tmp_path / "full.png", size=(64, 64))
    data = full.read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])  # cut in the middle of IDAT
    with pytest.raises(BadImageError, match="truncated"):
        load_rgb(tmp_path / "cut.png")
    # A complete zlib stream holding 16 of the 32 rows: Pillow alone decodes it with black rows.
    with pytest.raises(BadImageError, match="PNG's image data stops before its last row"):
        load_rgb(png_with_rows(tmp_path / "short.png", rows=16))
    jpeg = image(tmp_path / "full.jpg", size=(64, 64)).read_bytes()
    (tmp_path / "half.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    with pytest.raises(BadImageError, match="truncated"):
        load_rgb(tmp_path / "half.jpg")
    (tmp_path / "head.jpg").write_bytes(jpeg[:20])  # cut inside the header: Pillow cannot even identify it
    with pytest.raises(BadImageError, match="truncated image: it starts as a JPEG file"):
        load_rgb(tmp_path / "head.jpg")


def test_complete_pngs_of_every_layout_still_decode(tmp_path):
    """The PNG length check must not refuse valid files: interlaced, odd sizes, 1-bit, palette, 16-bit."""
    assert load_rgb(png_with_rows(tmp_path / "plain.png", 33, 17)).size == (33, 17)
    assert load_rgb(png_with_rows(tmp_path / "adam7.png", 13, 11, interlaced=True)).size == (13, 11)
    pixels = np.random.default_rng(0).integers(0, 256, (23, 29, 3), dtype=np.uint8)
    for mode in ("1", "P", "L", "RGBA"):
        Image.fromarray(pixels).convert(mode).save(tmp_path / f"m{mode}.png")
        assert load_rgb(tmp_path / f"m{mode}.png").size == (29, 23)
    Image.fromarray(pixels[..., 0].astype(np.uint16) * 257).save(tmp_path / "deep.png")
    assert load_rgb(tmp_path / "deep.png").size == (29, 23)


# ------------------------------------------------------------------ readers
def test_class_folders_skip_every_hostile_file_with_its_reason(tmp_path):
    root = hostile_class_folders(tmp_path / "d", tmp_path / "elsewhere")
    scan = read_class_folders(root)
    reasons = reasons_by_name(scan.skipped)
    assert "not valid UTF-8" in reasons["bad\\xff.jpg"]  # shown with its byte escaped, so it can be written
    assert "not valid UTF-8" in reasons["folder\\xfe"]
    assert reasons["dangling.jpg"].startswith("broken symbolic link")
    assert "outside" in reasons["escape.png"] and "secret.png" in reasons["escape.png"]
    assert "hidden file" in reasons[".hidden.png"] and "hidden folder" in reasons[".thumbs"]
    assert "not followed" in reasons["linked_folder"]
    assert set(scan.index["path"].map(lambda p: Path(p).name)) == \
        {f"{i}.png" for i in range(8)} | {"rotated.jpg", "inside_link.png", "short.png", "half.jpg"}
    json.dumps(scan.skipped).encode("utf-8")  # every entry can be written out
    pd.DataFrame(scan.skipped).to_csv(tmp_path / "skipped.csv")


def test_roboflow_refuses_rows_leading_outside_and_broken_links(tmp_path):
    root = tmp_path / "rf"
    secret = image(tmp_path / "secret.jpg", seed=5)
    rows = []
    for i in range(6):
        image(root / "train" / f"{i}.jpg", seed=i)
        rows.append({"filename": f"{i}.jpg", "mask": i % 2, "no-mask": 1 - i % 2})
    (root / "train" / "dangling.jpg").symlink_to(root / "nothing.jpg")
    (root / "train" / "unlisted_dangling.jpg").symlink_to(root / "nothing.jpg")
    image(root / "train" / ".hidden.jpg")
    rows += [{"filename": "../../secret.jpg", "mask": 1, "no-mask": 0},
             {"filename": str(secret), "mask": 1, "no-mask": 0},
             {"filename": "dangling.jpg", "mask": 1, "no-mask": 0}]
    pd.DataFrame(rows).to_csv(root / "train" / "_classes.csv", index=False)
    scan = read_roboflow(root)
    assert len(scan.index) == 6
    outside = [s for s in scan.skipped if "outside" in s["reason"]]
    assert [s["path"] for s in outside] == [str(secret)] * 2
    assert "line 8: resolves to" in outside[0]["reason"] and "line 9: resolves to" in outside[1]["reason"]
    reasons = reasons_by_name(scan.skipped)
    assert reasons["dangling.jpg"].endswith("line 10: broken symbolic link (its target does not exist)")
    assert reasons["unlisted_dangling.jpg"].startswith("broken symbolic link")
    assert "hidden file" in reasons[".hidden.jpg"]


def test_manifest_skips_outside_paths_empty_labels_and_reports_bad_ages(tmp_path):
    root = tmp_path / "m"
    secret = image(tmp_path / "secret.png", seed=9)
    rows = [{"path": f"imgs/{i}.png", "label": "mask" if i % 2 else "none", "age": 30} for i in range(6)]
    for i in range(8):
        image(root / "imgs" / f"{i}.png", seed=i)
    (root / "imgs" / "dangling.png").symlink_to(root / "nothing.png")
    rows += [
        {"path": "../secret.png", "label": "mask", "age": ""},     # line 8
        {"path": str(secret), "label": "mask", "age": ""},         # line 9
        {"path": "imgs/dangling.png", "label": "mask", "age": ""},  # line 10
        {"path": "imgs/0.png", "label": "  ", "age": ""},           # line 11
        {"path": "imgs/6.png", "label": "mask", "age": "thirty"},   # line 12
        {"path": "imgs/7.png", "label": "none", "age": "-4"},       # line 13
    ]
    pd.DataFrame(rows).to_csv(root / "manifest.csv", index=False)
    scan = read_manifest(root)
    reasons = [s["reason"] for s in scan.skipped]
    assert any("line 8: resolves to" in r and "outside" in r for r in reasons)
    assert any("line 9: resolves to" in r and "outside" in r for r in reasons)
    assert any("line 10: broken symbolic link" in r for r in reasons)
    assert any("line 11: empty label; the row is skipped" in r for r in reasons)
    assert any("line 12: age 'thirty' is not a whole number" in r and "kept with age unknown" in r for r in reasons)
    assert any("line 13: age '-4'" in r for r in reasons)
    assert "" not in set(scan.index["label_name"])
    assert len(scan.index) == 6 + 2  # the rows with a bad age keep their image
    kept = scan.index.set_index(scan.index["path"].map(lambda p: Path(p).name))["age"]
    assert pd.isna(kept["6.png"]) and pd.isna(kept["7.png"]) and kept["3.png"] == 30


@pytest.mark.parametrize("content, message", [(b"", "is empty"), (b"path,label\nimgs/0.png,caf\xe9\n", "not UTF-8")])
def test_empty_or_non_utf8_csv_is_a_data_error(tmp_path, content, message):
    root = tmp_path / "m"
    image(root / "imgs" / "0.png")
    (root / "manifest.csv").write_bytes(content)
    with pytest.raises(DataError, match=message):
        read_manifest(root)
    (root / "train").mkdir()
    (root / "train" / "_classes.csv").write_bytes(content.replace(b"path,label", b"filename,mask"))
    with pytest.raises(DataError, match=message):
        read_roboflow(root)


def test_test_size_too_small_for_the_class_count_names_the_minimum():
    labels = np.repeat(np.arange(4), 12)  # 48 images, 4 classes: the test split needs at least 4 images
    with pytest.raises(ConfigError, match=r"data.test_size=0.05 gives 3 test images of 48.*from 0.084 to 0.916"):
        assign_splits(labels, 0.05, 3, 0, seed=0)
    split, _ = assign_splits(labels, 0.084, 3, 0, seed=0)
    assert (split == "test").sum() == 5


# ------------------------------------------------------------------ end to end
def test_data_report_lists_every_hostile_file_and_uses_the_rest(tmp_path):
    root = hostile_class_folders(tmp_path / "d", tmp_path / "elsewhere")
    dm = MaskDataModule(settings(root, tmp_path / "cache", image_size=32))
    dm.prepare_data()
    dm.setup()
    report = report_of(dm)
    reasons = reasons_by_name(report["skipped"])
    for name, why in [("bad\\xff.jpg", "not valid UTF-8"), ("dangling.jpg", "broken symbolic link"),
                      ("escape.png", "outside"), (".hidden.png", "hidden file"), (".thumbs", "hidden folder"),
                      ("short.png", "truncated"), ("half.jpg", "truncated")]:
        assert why in reasons[name], (name, reasons.get(name))
    assert json.loads(json.dumps(report))["skipped"] == report["skipped"]
    used = dm.index.set_index(dm.index["path"].map(lambda p: Path(p).name))
    assert not set(reasons) & set(used.index)
    # The rotated photo was cached upright: the white quarter is on top, not on the left.
    cached = dm.data.decoded.images[used.loc["rotated.jpg", "cache_row"]]
    assert cached[:, :6].mean() > 220 and cached[:, -6:, :6].mean() < 30


def test_predict_skips_hostile_inputs_and_writes_the_others(tmp_path):
    from maskdet.models.module import MaskClassifier
    from maskdet.predict import predict

    model = MaskClassifier(num_classes=2, class_names=["a", "b"], image_size=32)
    ckpt = tmp_path / "model.ckpt"
    torch.save({"hyper_parameters": dict(model.hparams), "state_dict": model.state_dict()}, ckpt)
    inbox = tmp_path / "inbox"
    good = [image(inbox / f"ok{i}.png", seed=i) for i in range(2)]
    rotated_jpeg(inbox / "rotated.jpg")
    bad_name_file(inbox, good[0])
    (inbox / "dangling.jpg").symlink_to(inbox / "gone.jpg")
    (inbox / "escape.png").symlink_to(image(tmp_path / "elsewhere" / "x.png"))
    image(inbox / ".hidden.png")
    image(inbox / ".cache" / "y.png")
    png_with_rows(inbox / "short.png", rows=10)
    (inbox / "notes.txt").write_text("not an image")
    (inbox / "sub").mkdir()

    files, _ = list_inputs(str(inbox))
    assert sorted(p.name for p in files) == ["ok0.png", "ok1.png", "rotated.jpg", "short.png"]
    out = tmp_path / "run"
    cfg = OmegaConf.create({"ckpt_path": str(ckpt), "input": str(inbox), "batch_size": 2, "annotate": True,
                            "device": "cpu", "paths": {"output_dir": str(out)}})
    predict(cfg)
    predictions = pd.read_csv(out / "predictions.csv")
    assert sorted(Path(p).name for p in predictions["path"]) == ["ok0.png", "ok1.png", "rotated.jpg"]
    skipped = pd.read_csv(out / "skipped.csv")
    reasons = dict(zip(skipped["path"].map(lambda p: Path(p).name), skipped["reason"]))
    assert "not valid UTF-8" in reasons["bad\\xff.jpg"]
    assert reasons["dangling.jpg"].startswith("broken symbolic link")
    assert "outside" in reasons["escape.png"]
    assert "hidden file" in reasons[".hidden.png"] and "hidden folder" in reasons[".cache"]
    assert "truncated" in reasons["short.png"] and "not an image" in reasons["notes.txt"]
    assert len(list((out / "annotated").glob("*.jpg"))) == 3
    # Files named one by one or by a glob get the same answers.
    assert list_inputs(str(inbox / "dangling.jpg"))[1][0]["reason"].startswith("broken symbolic link")
    # Named by a glob, a link is read as named (no folder to stay in); like the shell, '*' skips hidden names.
    files, skipped = list_inputs(str(inbox / "*"))
    assert sorted(p.name for p in files) == ["escape.png", "ok0.png", "ok1.png", "rotated.jpg", "short.png"]
    reasons = reasons_by_name(skipped)
    assert "not valid UTF-8" in reasons["bad\\xff.jpg"] and reasons["dangling.jpg"].startswith("broken")
    assert "a folder matched by the glob" in reasons["sub"]


# ------------------------------------------------------------------ disk space and leftovers
@pytest.fixture
def small_disk(tmp_path):
    """A real 1 MB filesystem (tmpfs), so a cache that does not fit meets a really full disk."""
    mount = tmp_path / "disk"
    mount.mkdir()
    try:
        result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)],
                                capture_output=True, text=True)
    except FileNotFoundError:
        pytest.skip("no mount command here: the full-disk checks need a small tmpfs")
    if result.returncode != 0:
        pytest.skip(f"mounting a tmpfs is not permitted here ({result.stderr.strip()}): full-disk checks not run")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_cache_that_does_not_fit_is_refused_before_writing(tmp_path, small_disk):
    paths = pd.Series([str(image(tmp_path / "imgs" / f"{i}.png", seed=i)) for i in range(40)])
    where = re.escape(f" in {small_disk / 'decoded'}: it needs 2.0 MB and 1.0 MB are free")
    with pytest.raises(DataError, match="Not enough disk space for the decoded cache of 40 images at 128 px" + where):
        cache.load_or_build(paths, 128, small_disk)  # 40 x 3 x 128 x 128 bytes
    assert [p.name for p in (small_disk / "decoded").iterdir() if not p.name.endswith(".lock")] == []

    decoded = cache.load_or_build(paths, 32, small_disk)  # 123 kB: fits
    wide = lambda images: torch.zeros(len(images), 10_000)  # noqa: E731 - 40 x 10,000 float32 = 1.6 MB
    with pytest.raises(DataError, match="Not enough disk space for the backbone features"):
        cache.load_or_build_features(decoded, "wide", wide)
    assert not [p for p in decoded.folder.iterdir() if p.name.startswith(".")]
    narrow = cache.load_or_build_features(decoded, "narrow", lambda images: images.flatten(1)[:, :5])
    assert narrow.shape == (40, 5) and (decoded.folder / "features-narrow.npy").stat().st_size < 4096


def test_leftovers_of_interrupted_builds_are_removed_but_live_ones_kept(tmp_path):
    paths = pd.Series([str(image(tmp_path / "imgs" / f"{i}.png", seed=i)) for i in range(4)])
    decoded_dir = tmp_path / "cache" / "decoded"
    orphan = decoded_dir / ".32px-0123456789abcdef0123-k2j4h5"
    live = decoded_dir / ".32px-fedcba9876543210fedc-a1b2c3"
    for folder in (orphan, live):
        folder.mkdir(parents=True)
        (folder / "images.npy").write_bytes(b"\x00" * 100)
    with FileLock(f"{decoded_dir / '32px-fedcba9876543210fedc'}.lock"):  # a build in progress elsewhere
        decoded = cache.load_or_build(paths, 32, tmp_path / "cache")
    assert not orphan.exists() and live.exists()
    stale = decoded.folder / ".features-k.npy-x8y9z0"
    stale.write_bytes(b"half a file")
    cache.load_or_build_features(decoded, "k", lambda images: images.flatten(1)[:, :3])
    assert not stale.exists()
    shutil.rmtree(live)
