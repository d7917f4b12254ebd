import numpy as np
import pandas as pd
import pytest

from maskdet.data.splits import assign_splits, cap_per_class, minimum_class_size, select_subset
from maskdet.data.synthetic import COMP6721_COUNTS
from maskdet.errors import ConfigError, DataError


def comp6721_labels():
    return np.repeat(np.arange(4), COMP6721_COUNTS)


def test_reproduces_the_comp6721_split_table():
    labels = comp6721_labels()
    split, fold_of = assign_splits(labels, test_size=0.3, num_folds=10, fold=0, seed=0)
    test_counts = [int(((split == "test") & (labels == c)).sum()) for c in range(4)]
    assert test_counts == [648, 631, 649, 654]
    assert (split == "test").sum() == 2582
    assert (split != "test").sum() == 6023
    fold_sizes = sorted(np.bincount(fold_of[fold_of >= 0]).tolist(), reverse=True)
    assert fold_sizes == [603] * 3 + [602] * 7


def test_every_pool_image_is_in_exactly_one_fold_and_folds_are_stratified():
    labels = comp6721_labels()
    per_fold = []
    for fold in range(10):
        split, fold_of = assign_splits(labels, 0.3, 10, fold, seed=0)
        per_fold.append(np.flatnonzero(split == "val"))
        assert (fold_of[split == "val"] == fold).all()
        class_share = np.bincount(labels[split == "val"], minlength=4) / (split == "val").sum()
        assert np.allclose(class_share, np.array(COMP6721_COUNTS) / sum(COMP6721_COUNTS), atol=0.01)
    union = np.concatenate(per_fold)
    assert len(union) == len(set(union)) == 6023
    # the test split never moves with the fold
    assert all((assign_splits(labels, 0.3, 10, f, 0)[0] == "test").sum() == 2582 for f in (0, 9))


def test_same_seed_same_split_other_seed_other_split():
    labels = comp6721_labels()
    a, _ = assign_splits(labels, 0.3, 10, 3, seed=0)
    b, _ = assign_splits(labels, 0.3, 10, 3, seed=0)
    c, _ = assign_splits(labels, 0.3, 10, 3, seed=1)
    assert (a == b).all() and not (a == c).all()


def test_fold_seed_draws_other_folds_of_the_same_pool_and_keeps_the_test_split():
    """Repeated k-fold (data.fold_seed): each repeat is a full partition of the same training pool."""
    labels = comp6721_labels()
    plain_split, plain_folds = assign_splits(labels, 0.3, 10, 3, seed=0)
    same_split, same_folds = assign_splits(labels, 0.3, 10, 3, seed=0, fold_seed=0)
    assert (plain_split == same_split).all() and (plain_folds == same_folds).all()  # fold_seed = seed: unchanged
    split, folds = assign_splits(labels, 0.3, 10, 3, seed=0, fold_seed=1)
    assert ((split == "test") == (plain_split == "test")).all()
    pool = plain_folds >= 0
    assert ((folds >= 0) == pool).all() and (folds[pool] != plain_folds[pool]).mean() > 0.8  # 9 in 10 move
    assert sorted(np.bincount(folds[pool])) == sorted(np.bincount(plain_folds[pool]))
    # with groups: every group still inside one fold, the test split still that of data.seed
    groups = np.arange(len(labels)) // 3
    g_plain, g_plain_folds = assign_splits(labels, 0.3, 10, 0, seed=0, groups=groups)
    g_split, g_folds = assign_splits(labels, 0.3, 10, 0, seed=0, groups=groups, fold_seed=5)
    assert ((g_split == "test") == (g_plain == "test")).all()
    g_pool = g_plain_folds >= 0
    assert (g_folds[g_pool] != g_plain_folds[g_pool]).mean() > 0.8
    assert pd.Series(g_folds).groupby(groups).nunique().max() == 1


def test_fold_seed_is_checked_with_the_other_data_settings(tmp_path):
    from maskdet.data.settings import DataSettings
    from maskdet.data.sources import read_class_folders

    with pytest.raises(ConfigError, match=r"data.fold_seed=-1 must be a whole number of at least 0, or null"):
        DataSettings(read_class_folders, root=str(tmp_path), fold_seed=-1)
    with pytest.raises(ConfigError, match="data.fold_seed=2 re-draws the folds, but data.splits_file="):
        DataSettings(read_class_folders, root=str(tmp_path), fold_seed=2, splits_file=str(tmp_path / "splits.csv"))


def test_a_class_too_small_to_stratify_is_named_with_the_minimum():
    labels = np.array([0] * 50 + [1] * 50 + [2] * 5)
    need = minimum_class_size(0.3, 10)
    with pytest.raises(DataError, match=rf"'ffp2' \(5 images\).*at least {need} images"):
        assign_splits(labels, 0.3, 10, 0, 0, names=["a", "b", "ffp2"])
    assert need == 15  # 15 - ceil(4.5) = 10 images left for 10 folds


def test_bad_fold_settings_are_explained():
    with pytest.raises(ConfigError, match="data.fold=10 is out of range"):
        assign_splits(comp6721_labels(), 0.3, 10, 10, 0)
    with pytest.raises(ConfigError, match="data.test_size"):
        assign_splits(comp6721_labels(), 1.5, 10, 0, 0)


def _index():
    rng = np.random.default_rng(0)
    n = 400
    return pd.DataFrame({
        "label": rng.integers(0, 4, n),
        "gender": rng.choice(["male", "female", "unknown"], n),
        "race": rng.choice(["white", "black", "asian"], n),
        "split": rng.choice(["train", "val", "test"], n),
    })


def test_subset_filters_by_codes_or_names_and_intersections():
    index = _index()
    female = select_subset(index, {"gender": "female"})
    assert (index.loc[female, "gender"] == "female").all() and female.sum() == (index["gender"] == "female").sum()
    both = select_subset(index, {"gender": 1, "race": ["white", "black"]})
    assert set(index.loc[both, "race"]) <= {"white", "black"} and set(index.loc[both, "gender"]) == {"female"}
    with pytest.raises(ConfigError, match="data.subset.colour"):
        select_subset(index, {"colour": "red"})


def test_cap_keeps_at_most_n_per_split_and_class_deterministically():
    index = _index()
    kept = cap_per_class(index, 10, seed=0)
    counts = index[kept].groupby(["split", "label"]).size()
    assert counts.max() == 10 and len(counts) == 12
    assert (kept == cap_per_class(index, 10, seed=0)).all()
    assert not (kept == cap_per_class(index, 10, seed=1)).all()


def test_a_splits_file_with_two_rows_for_one_image_is_refused(tmp_path):
    from maskdet.data.splits import read_splits_file

    index = pd.DataFrame({"path": ["a.jpg", "b.jpg"], "label_name": ["x", "y"]})
    pd.DataFrame({"path": ["a.jpg", "b.jpg", "a.jpg"], "label": ["x", "y", "x"], "split": ["train", "test", "test"],
                  "fold": [1, None, None]}).to_csv(tmp_path / "splits.csv", index=False)
    with pytest.raises(DataError, match=r"lists 1 image\(s\) more than once \(e.g. a.jpg: split 'train'.*split 'test'"):
        read_splits_file(tmp_path / "splits.csv", index, None, 0)
