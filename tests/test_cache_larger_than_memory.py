"""Datasets larger than memory: splits above data.cache_memory_gb are read from the cache file per batch."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from maskdet.data import cache
from maskdet.data.images import load_resized
from tests.conftest import REPO, cli_env, compose_train


def test_row_reader_returns_the_rows_asked_for_in_their_order(tmp_path):
    array = np.lib.format.open_memmap(tmp_path / "a.npy", mode="w+", dtype=np.uint8, shape=(50, 3, 4, 4))
    array[:] = np.arange(50, dtype=np.uint8)[:, None, None, None]
    array.flush()
    reader = cache.RowReader(np.load(tmp_path / "a.npy", mmap_mode="r"))
    rows = np.array([7, 3, 49, 3, 0])
    assert (reader.read(rows) == np.load(tmp_path / "a.npy")[rows]).all()
    features = np.random.default_rng(0).normal(size=(20, 9)).astype(np.float32)
    np.save(tmp_path / "f.npy", features)
    assert (cache.RowReader(np.load(tmp_path / "f.npy", mmap_mode="r")).read([19, 2]) == features[[19, 2]]).all()


def test_a_cut_short_cache_file_is_named(tmp_path):
    array = np.lib.format.open_memmap(tmp_path / "a.npy", mode="w+", dtype=np.uint8, shape=(10, 8))
    reader = cache.RowReader(array)
    with open(tmp_path / "a.npy", "r+b") as handle:
        handle.truncate(reader.offset + 5 * 8)
    with pytest.raises(Exception, match="ended early at row 9"):
        reader.read([9])


@pytest.mark.parametrize("experiment", [[], ["+experiment=resnet18_frozen", "model.weights=null",
                                              "data.image_size=32", "data.augment=null"]])
def test_reading_batches_from_the_cache_file_gives_the_in_memory_result(experiment, tiny_dataset, cache_dir, tmp_path,
                                                                        caplog):
    from maskdet.train import train

    base = [*experiment, "data=folder", f"data.root={tiny_dataset}", "data.num_folds=3", "trainer.max_epochs=2",
            "trainer.deterministic=true", "seed=2", "~logger", "callbacks.explanations=null"]
    in_memory = train(compose_train(base, tmp_path / "ram", cache_dir))
    with caplog.at_level("INFO", logger="maskdet.data.datamodule"):
        from_file = train(compose_train([*base, "data.cache_memory_gb=0"], tmp_path / "file", cache_dir))
    read_from_file = [r.getMessage() for r in caplog.records if "batches are read from" in r.getMessage()]
    assert {m.split()[0] for m in read_from_file} >= {"train", "val", "test"}, read_from_file
    assert from_file["val"] == in_memory["val"] and from_file["test"] == in_memory["test"]
    assert (tmp_path / "ram" / "predictions.csv").read_bytes() == (tmp_path / "file" / "predictions.csv").read_bytes()


# ------------------------------------------------------------------ cache build at scale
BUILD = """
import logging, sys, threading, time
import pandas as pd
import pyarrow.parquet  # noqa: F401 - its libraries (~40 MB) are loaded before measuring, not by the build
from maskdet.data import cache

def status(key):
    return next(int(line.split()[1]) * 1024 for line in open("/proc/self/status") if line.startswith(key + ":"))

logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(message)s")
paths = pd.Series(open(sys.argv[1]).read().split("\\n"))
size, workers = int(sys.argv[3]), int(sys.argv[4]) or None
before, peak_anon, done = status("VmRSS"), [status("RssAnon")], False
anon_before = peak_anon[0]

def sample():  # RssAnon has no high-water mark of its own
    while not done:
        peak_anon.append(status("RssAnon"))
        time.sleep(0.005)

sampler = threading.Thread(target=sample)
sampler.start()
cache.load_or_build(paths, size, sys.argv[2], workers=workers)
done = True
sampler.join()
print(status("VmHWM") - before, max(peak_anon) - anon_before)
"""


def _build_process(tmp_path, files, copies: int, size: int, workers: int = 0, **popen) -> subprocess.Popen:
    """A real build of ``copies`` x ``files`` paths in a process of its own (files repeat: decoding is the
    same work whatever the bytes)."""
    listing = tmp_path / "paths.txt"
    listing.write_text("\n".join(str(p) for p in files * copies))
    return subprocess.Popen([sys.executable, "-c", BUILD, str(listing), str(tmp_path / "cache"), str(size),
                             str(workers)], cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, text=True, **popen)


@pytest.mark.slow
def test_building_a_large_cache_holds_a_small_part_of_it_in_memory(tiny_dataset, tmp_path):
    files = sorted(tiny_dataset.rglob("*.jpg"))
    copies = 12_000 // len(files)
    proc = _build_process(tmp_path, files, copies, 96, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = proc.communicate(timeout=600)
    shutil.rmtree(tmp_path / "cache")
    assert proc.returncode == 0, err[-3000:]
    peak_rss_growth, peak_anon_growth = map(int, out.split())
    cache_bytes = len(files) * copies * 3 * 96 * 96  # 332 MB; reading its meta.parquet back costs ~35 MB
    # A writable memory map held every written page (RSS grew by the whole cache); threads fed the whole
    # list at once held ~2 kB per file. Now the pages are the page cache's and the results ~200 B per file.
    assert peak_rss_growth < cache_bytes / 4, (peak_rss_growth, cache_bytes)
    assert peak_anon_growth < cache_bytes / 8, (peak_anon_growth, cache_bytes)
    progress = [line for line in err.splitlines() if "decoding 12,000 images" in line]  # log lines off a terminal
    assert 8 <= len(progress) <= 12 and progress[-1].split(": ")[-1].startswith("done in")


def test_a_killed_build_leaves_no_half_cache_and_the_next_build_completes(tiny_dataset, tmp_path, caplog):
    files = sorted(tiny_dataset.rglob("*.jpg"))
    proc = _build_process(tmp_path, files, 25, 64, workers=1, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    for line in proc.stderr:  # kill it once a tenth of the 3,000 images are written
        if " % (" in line:
            proc.send_signal(signal.SIGKILL)
            break
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    decoded_dir = tmp_path / "cache" / "decoded"
    (half,) = [p for p in decoded_dir.iterdir() if p.name.startswith(".")]  # the killed build's temporary folder
    assert not [p for p in decoded_dir.iterdir() if p.is_dir() and not p.name.startswith(".")]

    paths = pd.Series((tmp_path / "paths.txt").read_text().split("\n"))
    with caplog.at_level(logging.INFO, logger="maskdet.summary"):  # progress lines reach the console (no terminal)
        decoded = cache.load_or_build(paths, 64, tmp_path / "cache")
        features = cache.load_or_build_features(decoded, "k", lambda images: images.flatten(1)[:, :4])
    assert not half.exists() and not [p for p in decoded_dir.iterdir() if p.name.startswith(".")]
    assert decoded.images.shape == (3000, 3, 64, 64) and (decoded.errors == "").all()
    for i in (0, 1234, 2999):
        assert (decoded.images[i] == load_resized(paths[i], 64).transpose(2, 0, 1)).all()
    assert np.allclose(features, decoded.images.reshape(3000, -1)[:, :4] / 255)
    steps = [r.getMessage() for r in caplog.records if "decoding 3,000 images" in r.getMessage()]
    assert 8 <= len(steps) <= 12 and steps[-1].split(": ")[-1].startswith("done in")
    assert any("computing backbone features of 3,000 images: done" in r.getMessage() for r in caplog.records)


# ------------------------------------------------------------------ DDP reading the cache file
@pytest.mark.slow
def test_ddp_processes_read_their_shards_from_the_shared_cache_file(tiny_dataset, cache_dir, tmp_path):
    result = subprocess.run([sys.executable, "-m", "maskdet.train", "trainer=ddp_sim", "data=folder",
                             f"data.root={tiny_dataset}", "data.num_folds=3", "trainer.max_epochs=2", "task_name=ddp",
                             "data.eval_batch_size=8", "data.cache_memory_gb=0", "~logger"],
                            cwd=REPO, env=cli_env(cache_dir, tmp_path), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    (run,) = (tmp_path / "outputs" / "ddp" / "runs").iterdir()
    read = [re.findall(r"(\w+) split \(0.00 GB\) is above data.cache_memory_gb: batches are read from (\S+)",
                       (run / log).read_text()) for log in ("train.log", "train_ddp_process_1.log")]
    assert [[split for split, _ in rank] for rank in read] == [["train", "val", "test"]] * 2
    (cache_file,) = {file for rank in read for _, file in rank}  # both ranks read the one shared file
    assert Path(cache_file).parent.parent == cache_dir / "decoded"
    splits = pd.read_csv(run / "splits.csv")
    test = {str(tiny_dataset / p) for p in splits.loc[splits["split"] == "test", "path"]}
    predictions = pd.read_csv(run / "predictions.csv")
    assert len(predictions) == len(test) == 36 and set(predictions["path"]) == test  # both shards, once each
    assert json.loads((run / "metrics.json").read_text())["epochs_trained"] == 2
