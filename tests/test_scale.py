"""Datasets larger than memory: splits above data.cache_memory_gb are read from the cache file per batch."""

from __future__ import annotations

import numpy as np
import pytest

from maskdet.data import cache
from tests.conftest import compose_train


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
def test_reading_batches_from_the_cache_file_gives_the_in_memory_result(experiment, tiny_dataset, cache_dir, tmp_path):
    from maskdet.train import train

    base = [*experiment, "data=folder", f"data.root={tiny_dataset}", "data.num_folds=3", "trainer.max_epochs=2",
            "trainer.deterministic=true", "seed=2", "~logger", "callbacks.explanations=null"]
    in_memory = train(compose_train(base, tmp_path / "ram", cache_dir))
    from_file = train(compose_train([*base, "data.cache_memory_gb=0"], tmp_path / "file", cache_dir))
    assert from_file["val"] == in_memory["val"] and from_file["test"] == in_memory["test"]
    assert (tmp_path / "ram" / "predictions.csv").read_bytes() == (tmp_path / "file" / "predictions.csv").read_bytes()
