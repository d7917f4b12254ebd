"""The DataModule: subsets without leakage, caps, balancing, the decoded cache and batch augmentation."""

import json
import os
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from PIL import Image

from maskdet.data.augment import BatchAugment
from maskdet.data.cache import load_or_build
from tests.conftest import REPO, cli_env
from tests.helpers import commands
from tests.helpers.data import datamodule


def test_subset_evaluation_never_sees_a_training_image(small_dataset, cache_dir):
    full = datamodule(small_dataset, cache_dir)
    train_paths = set(full.index.loc[full.index["split"] == "train", "path"])
    for subset in ({"gender": "female"}, {"race": ["white", "black"]}, {"gender": "male", "race": "asian"}):
        sub = datamodule(small_dataset, cache_dir, subset=subset, cap_per_class=5)
        test_rows = sub._splits["test"].rows.numpy()
        test_paths = set(sub.index.loc[test_rows, "path"])
        assert test_paths and not test_paths & train_paths
        assert (sub.index["split"] == full.index["split"]).all()  # subsets never re-split
        part = sub.index.loc[test_rows]
        for attribute, wanted in subset.items():
            assert set(part[attribute]) <= set(wanted if isinstance(wanted, list) else [wanted])
        assert part.groupby("label").size().max() <= 5


def test_training_never_runs_on_zero_images(small_dataset, cache_dir):
    from maskdet.errors import DataError

    with pytest.raises(DataError, match="training split is empty"):
        datamodule(small_dataset, cache_dir, subset={"age_group": "150-199"})


def test_balanced_sampler_evens_out_label_by_group(small_dataset, cache_dir):
    dm = datamodule(small_dataset, cache_dir, balance_by=["race"], batch_size=64)
    torch.manual_seed(0)
    rows = torch.cat([b["row"] for _ in range(20) for b in dm.train_dataloader()]).numpy()
    drawn = dm.index.loc[rows].groupby(["label", "race"]).size()
    assert drawn.max() / drawn.min() < 1.6  # the raw cells differ by a factor of more than 5
    raw = dm.index[dm.index["split"] == "train"].groupby(["label", "race"]).size()
    assert raw.max() / raw.min() > 5


def test_cache_equals_the_pil_path_and_is_reused(tiny_dataset, tmp_path):
    paths = sorted(str(p) for p in tiny_dataset.rglob("*.jpg"))[:10]
    import pandas as pd

    decoded = load_or_build(pd.Series(paths), 32, tmp_path)
    for i, path in enumerate(paths):
        reference = np.asarray(Image.open(path).convert("RGB").resize((32, 32), Image.BILINEAR)).transpose(2, 0, 1)
        assert np.array_equal(decoded.images[i], reference)
    built = os.stat(decoded.folder / "images.npy").st_mtime_ns
    again = load_or_build(pd.Series(paths), 32, tmp_path)
    assert again.folder == decoded.folder and os.stat(again.folder / "images.npy").st_mtime_ns == built
    # a changed file gives a new cache (the index is rebuilt when files change)
    time.sleep(0.01)
    Image.open(paths[0]).transpose(Image.FLIP_LEFT_RIGHT).save(paths[0])
    changed = load_or_build(pd.Series(paths), 32, tmp_path)
    assert changed.folder != decoded.folder
    assert not np.array_equal(changed.images[0], decoded.images[0])


def test_cache_and_streaming_paths_give_identical_batches(tiny_dataset, cache_dir):
    cached = datamodule(tiny_dataset, cache_dir)
    streamed = datamodule(tiny_dataset, cache_dir, decoded_cache=False, num_workers=0)
    a, b = next(iter(cached.test_dataloader())), next(iter(streamed.test_dataloader()))
    order_a, order_b = a["row"].argsort(), b["row"].argsort()
    assert torch.equal(a["row"][order_a], b["row"][order_b])
    assert torch.equal(a["image"][order_a], b["image"][order_b]) and a["image"].dtype == torch.uint8


def test_augmentation_draws_parameters_per_sample():
    torch.manual_seed(0)
    image = torch.rand(1, 3, 32, 32).expand(16, 3, 32, 32).contiguous()
    out = BatchAugment(flip=0.5, rotation=15, brightness=0.2, contrast=0.2)(image)
    distinct = {tuple(x.flatten()[:50].round(decimals=4).tolist()) for x in out}
    assert len(distinct) == 16  # every copy of the same image came out different
    flips = BatchAugment(flip=0.5, rotation=0, brightness=0, contrast=0)(image)
    flipped = [torch.equal(f, image[0].flip(-1)) for f in flips]
    assert 0 < sum(flipped) < 16 and all(f or torch.equal(x, image[0]) for f, x in zip(flipped, flips))


def test_augmentation_applies_to_training_batches_only(tiny_dataset, cache_dir):
    import lightning as L

    dm = datamodule(tiny_dataset, cache_dir, augment=BatchAugment())
    dm.trainer = L.Trainer(accelerator="cpu", logger=False)
    dm.trainer.validating = True
    batch = next(iter(dm.val_dataloader()))
    out = dm.on_after_batch_transfer(batch, 0)
    assert torch.equal(out["image"], batch["image"].float() / 255)
    dm.trainer.training = True
    assert not torch.equal(dm.on_after_batch_transfer(batch, 0)["image"], out["image"])


@pytest.mark.slow
def test_data_report_cli(tiny_dataset, cache_dir, tmp_path):
    faces = shutil.copytree(tiny_dataset, tmp_path / "faces")  # a copy: the session's dataset stays as it is
    (faces / "with_cloth_mask" / "notes.txt").write_text("x")
    result = commands.run([sys.executable, "-m", "maskdet.data", "data=folder", f"data.root={faces}",
                             "data.num_folds=3"], cwd=REPO, env=cli_env(cache_dir, tmp_path),
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "120 images in 4 classes" in result.stdout and "notes.txt: not an image file" in result.stdout
    (report_path,) = (tmp_path / "outputs" / "data_report" / "runs").glob("*/data_report.json")
    report = json.loads(report_path.read_text())
    assert report["num_images"] == 120 and report["classes"][0] == "without_mask"
    assert report["counts"]["split_class"]["test"] == {c: 9 for c in report["classes"]}
    assert sum(report["groups"]["gender"].values()) == 120
    assert report["skipped"] == [{"path": str(faces / "with_cloth_mask" / "notes.txt"),
                                  "reason": "not an image file (extension '.txt')"}]


def _build_in_process(cache_dir: str, queue) -> None:
    from maskdet.data.cache import load_or_build
    from maskdet.data.sources import read_class_folders
    from maskdet.data.synthetic import ensure_dataset, make_spec

    root = ensure_dataset(make_spec(per_class=15, seed=5, size=48), cache_dir)
    decoded = load_or_build(read_class_folders(root).index["path"], 24, cache_dir)
    queue.put((str(decoded.folder), int(np.asarray(decoded.images).sum())))


def test_parallel_jobs_share_one_dataset_and_one_cache(tmp_path):
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    jobs = [ctx.Process(target=_build_in_process, args=(str(tmp_path), queue)) for _ in range(3)]
    for job in jobs:
        job.start()
    for job in jobs:
        job.join(120)
    assert [job.exitcode for job in jobs] == [0, 0, 0]
    results = {queue.get(timeout=5) for _ in jobs}
    assert len(results) == 1  # the same folder and the same pixels for every job
    assert len(list((tmp_path / "decoded").glob("24px-*[!k]"))) == 1
    assert len([p for p in (tmp_path / "synthetic").iterdir() if p.is_dir()]) == 1


def test_a_new_layout_is_one_reader_and_one_config_node(tiny_dataset, cache_dir, tmp_path):
    """tests/helpers/data.read_flat_folder is not shipped: naming it in data.source is all it takes for the
    preflight, the split, the subsets and the data report; its own option is checked like any key."""
    from hydra.utils import instantiate

    from maskdet.data.prepare import prepare
    from maskdet.data.report import build_report
    from maskdet.errors import ConfigError
    from maskdet.preflight import check_config
    from tests.conftest import compose_train

    flat = tmp_path / "flat"
    flat.mkdir()
    for path in sorted(p for p in tiny_dataset.rglob("*") if p.is_file()):
        (flat / f"{path.parent.name}__{path.name}").write_bytes(path.read_bytes())
    (flat / "notes.png").write_bytes(b"")  # no class in its name: skipped with the reason
    layout = ["data=folder", f"data.root={flat}", "data.source._target_=tests.helpers.data.read_flat_folder",
              "+data.source.separator=__", "data.num_folds=3"]
    cfg = compose_train(layout, tmp_path / "run", cache_dir)
    check_config(cfg, "train")
    settings = instantiate(cfg.data)
    data = prepare(settings)
    assert sorted(data.class_names) == sorted(p.name for p in tiny_dataset.iterdir())
    assert len(data.index) == 120 and set(data.index["split"]) == {"train", "val", "test"}
    report = build_report(data, settings.source_name)
    assert report["source"] == "flat_folder" and report["num_images"] == 120
    assert [s["reason"] for s in report["skipped"]] == ["no '__' in the name to give the class"]
    with pytest.raises(ConfigError, match=r"data\.source\.separatr.*Did you mean data\.source\.separator"):
        check_config(compose_train([*layout[:-2], "+data.source.separatr=_"], tmp_path / "run2", cache_dir), "train")


def test_the_data_pipeline_runs_without_lightning(tiny_dataset, cache_dir):
    """maskdet.data.prepare is plain Python: the split contract can be used and tested without Lightning."""
    code = ("import sys\nfrom maskdet.data.prepare import prepare\nfrom maskdet.data.settings import DataSettings\n"
            "from maskdet.data.sources import read_class_folders\n"
            f"data = prepare(DataSettings(read_class_folders, root={str(tiny_dataset)!r}, cache_dir={str(cache_dir)!r}, "
            "num_folds=3))\n"
            "print(len(data.used), sorted(data.used['split'].unique()), 'lightning' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True).stdout
    assert out.split("\n")[0] == "120 ['test', 'train', 'val'] False"


def test_a_fractional_fold_is_refused_with_the_key(tmp_path):
    from maskdet.errors import ConfigError
    from tests.helpers.data import settings

    with pytest.raises(ConfigError, match=r"data.fold=1.5 must be a whole number of at least 0"):
        settings(tmp_path, tmp_path, fold=1.5)
