"""Robustness per group (maskdet/evaluation/robustness.py): the corruptions, the report's numbers against an
independent recomputation, the interaction test on planted effects, and evaluate's robustness.enabled."""

from __future__ import annotations

import json
import shutil
import sys

import numpy as np
import pandas as pd
import pytest
import torch
from statsmodels.stats.proportion import proportion_confint

from maskdet.errors import ConfigError
from maskdet.evaluation.robustness import (
    CORRUPTIONS,
    corruption_seed,
    interaction_test,
    robustness_statistics,
    write_robustness_report,
)
from tests.conftest import REPO, cli_env
from tests.helpers import commands


def _images(n: int = 6, size: int = 32, seed: int = 0) -> torch.Tensor:
    """Smooth random faces-sized images with a little texture, in [0, 1]."""
    g = torch.Generator().manual_seed(seed)
    x = torch.nn.functional.interpolate(torch.rand(n, 3, 6, 6, generator=g), size=size, mode="bilinear",
                                        align_corners=False)
    return (x + 0.1 * torch.rand(n, 3, size, size, generator=g)).clamp(0, 1)


@pytest.mark.parametrize("name", list(CORRUPTIONS))
def test_each_corruption_is_deterministic_keeps_shape_and_range_and_grows_with_severity(name):
    x = _images()
    before = x.clone()
    f = CORRUPTIONS[name]
    runs = [f(x, 3, torch.Generator().manual_seed(7)) for _ in range(2)]
    assert torch.equal(runs[0], runs[1])  # the same seed, the same images
    assert torch.equal(x, before)  # the input is left as it was
    distances = []
    for severity in range(1, 6):
        y = f(x, severity, torch.Generator().manual_seed(7))
        assert y.shape == x.shape and y.dtype == x.dtype
        assert float(y.min()) >= 0 and float(y.max()) <= 1
        distances.append(float((y - x).abs().mean()))
    assert distances[0] > 0
    assert distances[4] > distances[0]
    assert all(b >= a - 1e-6 for a, b in zip(distances, distances[1:])), distances  # monotone on these images


def test_the_noise_depends_on_the_seed_and_leaves_the_global_random_state_alone():
    x = _images()
    torch.manual_seed(123)
    state = torch.get_rng_state()
    a = CORRUPTIONS["noise"](x, 2, torch.Generator().manual_seed(corruption_seed(0, "noise", 2)))
    b = CORRUPTIONS["noise"](x, 2, torch.Generator().manual_seed(corruption_seed(1, "noise", 2)))
    assert not torch.equal(a, b)
    assert torch.equal(torch.get_rng_state(), state)
    assert corruption_seed(0, "noise", 2) == corruption_seed(0, "noise", 2) != corruption_seed(0, "noise", 3)


@pytest.mark.parametrize("options,named", [
    ({"corruptions": ["blur", "fog"]}, "robustness.corruptions"), ({"corruptions": []}, "robustness.corruptions"),
    ({"severities": [0, 3]}, "robustness.severities"), ({"severities": [6]}, "robustness.severities"),
    ({"attributes": ["height"]}, "robustness.attributes"), ({"n_bootstrap": 0}, "robustness.n_bootstrap"),
    ({"alpha": 1.5}, "robustness.alpha")])
def test_bad_settings_are_refused_naming_the_key(options, named):
    from maskdet.evaluation.robustness import check_options

    with pytest.raises(ConfigError, match=named):
        check_options(**options)


class _Data:
    """What robustness_report reads of a datamodule: the test images in batches, the index, the classes."""

    class_names = ["mask", "no_mask"]

    def __init__(self, n: int = 40):
        g = torch.Generator().manual_seed(3)
        self.images = (torch.rand(n, 3, 32, 32, generator=g) * 255).to(torch.uint8)
        self.labels = torch.arange(n) % 2
        self.index = pd.DataFrame({"path": [f"{i}.jpg" for i in range(n)],
                                   "label_name": [self.class_names[int(c)] for c in self.labels],
                                   "age": 30, "gender": ["male" if i % 3 else "female" for i in range(n)],
                                   "race": "white", "age_group": "20-39"})

        class Settings:
            eval_batch_size = 16

        self.settings = Settings()

    def image_dataloader(self, split):
        for i in range(0, len(self.labels), 16):
            yield {"image": self.images[i:i + 16], "label": self.labels[i:i + 16], "row": torch.arange(i, min(i + 16, len(self.labels)))}


class _Model(torch.nn.Module):
    """Mean brightness of the red channel against a threshold: a model whose answers move under corruption."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.tensor([8.0]))

    def forward(self, x):
        s = (x[:, 0].mean((1, 2)) - x[:, 1].mean((1, 2))) * self.w
        return torch.stack([s, -s], 1)


def test_the_report_matches_an_independent_recomputation(tmp_path):
    data, model = _Data(), _Model()
    names, severities = ["noise", "low_light", "occlude_eyes"], [1, 5]
    report = write_robustness_report(model, data, tmp_path, corruptions=names, severities=severities,
                                     min_group_size=5, n_bootstrap=50, seed=4)
    for f in ("robustness.csv", "robustness.json", "robustness.md", "robustness.png", "robustness_groups.png"):
        assert (tmp_path / f).is_file(), f
    table = pd.read_csv(tmp_path / "robustness.csv")
    # the per-group heat map: each group's accuracy averaged over the severities, clean first
    from maskdet.evaluation.robustness import plot_groups

    cells = np.asarray(plot_groups(report, tmp_path / "again.png").axes[0].images[0].get_array())
    grouped = table[(table.attribute != "overall") & (table.group != "unknown")]
    first = grouped.iloc[0]
    mine = grouped[(grouped.attribute == first.attribute) & (grouped.group == first.group)]
    assert cells[0, 0] == pytest.approx(mine[mine.severity == 0]["accuracy"].item())
    assert list(cells[0, 1:]) == pytest.approx([mine[mine.corruption == n]["accuracy"].mean() for n in names])
    images = data.images.float() / 255
    for name, severity in [("clean", 0)] + [(n, s) for n in names for s in severities]:
        if name == "clean":
            corrupted = images
        else:  # the same batches, the same generator, applied by hand
            g = torch.Generator().manual_seed(corruption_seed(4, name, severity))
            corrupted = torch.cat([CORRUPTIONS[name](images[i:i + 16], severity, g) for i in range(0, 40, 16)])
        with torch.no_grad():
            correct = (model(corrupted).argmax(1) == data.labels).numpy()
        overall = table[(table.corruption == name) & (table.severity == severity) & (table.attribute == "overall")]
        assert overall["accuracy"].item() == pytest.approx(correct.mean())
        low, high = proportion_confint(int(correct.sum()), len(correct), method="wilson")
        assert overall["accuracy_low"].item() == pytest.approx(low) and overall["accuracy_high"].item() == pytest.approx(high)
        assert np.array_equal(report["per_image"][f"{name}@{severity}"], correct)
        for gender, part in pd.Series(correct).groupby(data.index["gender"].to_numpy()):
            row = table[(table.corruption == name) & (table.severity == severity) & (table.attribute == "gender")
                        & (table.group == gender)]
            assert row["accuracy"].item() == pytest.approx(part.mean()) and row["n"].item() == len(part)
    tests = json.loads((tmp_path / "robustness.json").read_text())["interaction_tests"]
    assert {t["corruption"] for t in tests} == set(names) and {t["severity"] for t in tests} == {5}
    by_gender = [t for t in tests if t["attribute"] == "gender"]
    assert {(t["group_1"], t["group_2"]) for t in by_gender} == {("male", "female")}  # the two largest groups
    assert [t["family_size"] for t in by_gender] == [len(names)] * len(names)  # one family per attribute
    md = (tmp_path / "robustness.md").read_text()
    assert "Wilson" in md and "Holm" in md and "bootstrap" in md


def _synthetic(n: int, clean_acc: float, loss_a: float, loss_b: float, rng) -> tuple[pd.DataFrame, dict]:
    groups = pd.DataFrame({"gender": ["a"] * n + ["b"] * n})
    clean = rng.random(2 * n) < clean_acc
    lose = np.r_[rng.random(n) < loss_a / clean_acc, rng.random(n) < loss_b / clean_acc]
    return groups, {("clean", 0): clean, ("blur", 5): clean & ~lose}


def test_a_planted_widening_is_found_and_none_is_found_when_none_is_planted():
    rng = np.random.default_rng(0)
    groups, correctness = _synthetic(150, 0.9, 0.0, 0.3, rng)  # group b loses 30 points under blur, a none
    report = robustness_statistics(groups, correctness, attributes=["gender"], min_group_size=30, n_bootstrap=500)
    (test,) = report["interaction_tests"]
    assert test["group_1"] == "a" and test["group_2"] == "b"
    assert test["interaction"] == pytest.approx(test["corrupted_gap"] - test["clean_gap"])
    assert 0.2 < test["interaction"] < 0.4 and test["interaction_low"] > 0 and test["significant"]
    assert test["p_value"] < 0.01

    false_alarms = 0
    for _ in range(40):  # both groups lose 10 points: no interaction
        groups, correctness = _synthetic(100, 0.9, 0.1, 0.1, rng)
        clean, hit = correctness[("clean", 0)], correctness[("blur", 5)]
        result = interaction_test(clean, hit, np.arange(200) < 100, np.arange(200) >= 100, 300, rng)
        false_alarms += result["p_value_raw"] < 0.05
    assert false_alarms <= 7  # about 2 expected at 5 %


def test_holm_is_across_corruptions_within_an_attribute():
    from maskdet.evaluation.statistics import adjust_p_values

    rng = np.random.default_rng(1)
    groups, correctness = _synthetic(120, 0.9, 0.0, 0.2, rng)
    correctness[("noise", 3)] = correctness[("clean", 0)].copy()
    report = robustness_statistics(groups, correctness, attributes=["gender"], min_group_size=30, n_bootstrap=200)
    tests = report["interaction_tests"]
    assert [t["family_size"] for t in tests] == [2, 2]
    assert [t["p_value"] for t in tests] == pytest.approx(list(adjust_p_values([t["p_value_raw"] for t in tests])))


def test_evaluate_writes_the_robustness_report_and_refuses_a_bad_corruption_first(tiny_run, cache_dir, tmp_path):
    run = shutil.copytree(tiny_run, tmp_path / "run")
    ckpt = run / "checkpoints" / "best.ckpt"
    env = cli_env(cache_dir, tmp_path)
    refused = commands.run([sys.executable, "-m", "maskdet.evaluate", f"ckpt_path={ckpt}", "robustness.enabled=true",
                              "robustness.corruptions=[blur,fog]", f"hydra.run.dir={tmp_path / 'bad'}"],
                             cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert refused.returncode != 0
    assert "robustness.corruptions" in refused.stderr and "fog" in refused.stderr and "occlude_eyes" in refused.stderr
    assert "Traceback" not in refused.stderr
    assert not (tmp_path / "bad" / "predictions.csv").exists()  # refused before any work

    out = tmp_path / "ev"
    done = commands.run([sys.executable, "-m", "maskdet.evaluate", f"ckpt_path={ckpt}", "robustness.enabled=true",
                           "robustness.severities=[1,5]", "robustness.corruptions=[blur,occlude_lower_face]",
                           "robustness.n_bootstrap=200", "robustness.min_group_size=2", "bias.n_bootstrap=10",
                           f"hydra.run.dir={out}"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    for f in ("robustness.csv", "robustness.json", "robustness.md", "robustness.png"):
        assert (out / "robustness" / f).is_file(), f
    table = pd.read_csv(out / "robustness" / "robustness.csv")
    overall = table[table.attribute == "overall"]
    assert set(zip(overall.corruption, overall.severity)) == {("clean", 0), ("blur", 1), ("blur", 5),
                                                              ("occlude_lower_face", 1), ("occlude_lower_face", 5)}
    predictions = pd.read_csv(out / "predictions.csv")
    clean = overall[overall.corruption == "clean"]
    assert clean["n"].item() == len(predictions)
    assert clean["accuracy"].item() == pytest.approx((predictions["label"] == predictions["prediction"]).mean())
