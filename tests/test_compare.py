"""Comparison of configurations: known answers on run folders built with known figures, the statistics
against hand-computed values, the command line, and a real multirun whose callback writes the comparison."""

import functools
import hashlib
import json
import math
import shutil
import sys

import numpy as np
import pandas as pd
import pytest
import yaml
from scipy import stats

from maskdet.errors import ConfigError, DataError
from maskdet.evaluation.compare import load_runs, write_comparison
from maskdet.evaluation.cv import collect_runs, write_summary
from maskdet.evaluation.statistics import corrected_t_test, holm, mcnemar_exact
from maskdet.hydra_callbacks import job_name
from tests.conftest import REPO, cli_env, compose_train
from tests.helpers import commands

CLASSES = ["without_mask", "with_surgical_mask", "with_cloth_mask", "with_ffp2_mask"]
N_TEST = 200


def _record(data="faces-v1", classes=CLASSES, max_epochs=20, n_test=N_TEST):
    """A ``tested_on`` record as maskdet.evaluation.holdout writes it (the fingerprint named by ``data``)."""
    return {"fingerprint": hashlib.sha256(data.encode()).hexdigest(), "test_images": n_test,
            "class_names": list(classes), "trainer": {"max_epochs": max_epochs, "precision": "32-true"}}


def _run(folder, overrides, fold, accuracy, rng, gap=None, n_train=300, prefix="img", record=None):
    """A finished run folder whose test predictions have exactly ``accuracy`` (wrong images drawn by ``rng``);
    with ``record``, its metrics.json says what it was tested on (without: a run of an older maskdet)."""
    (folder / ".hydra").mkdir(parents=True)
    (folder / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump([*overrides, f"data.fold={fold}"]))
    labels = np.array(CLASSES * (N_TEST // len(CLASSES)))
    wrong = rng.choice(N_TEST, size=round(N_TEST * (1 - accuracy)), replace=False)
    predictions = labels.copy()
    predictions[wrong] = np.roll(labels, 1)[wrong]
    pd.DataFrame({"path": [f"/data/{prefix}_{i}.jpg" for i in range(N_TEST)], "label": labels,
                  "prediction": predictions, "confidence": np.where(predictions == labels, 0.9, 0.6)}
                 ).to_csv(folder / "predictions.csv", index=False)
    metrics = {"val": {}, "test": {"test/acc": accuracy}, "class_names": CLASSES}
    (folder / "metrics.json").write_text(json.dumps({**metrics, "tested_on": record} if record else metrics))
    (folder / "data_report.json").write_text(json.dumps({"counts": {"split": {"train": n_train, "val": 75, "test": N_TEST}}}))
    gaps = [{"attribute": "gender", "groups_ranked": 2, "gap": gap}] if gap is not None else \
        [{"attribute": "gender", "groups_ranked": 0}]
    (folder / "bias_report.json").write_text(json.dumps({"gaps": gaps}))


def _sweep(root, configs, seed=0, record=None):
    """One job folder per configuration and fold: ``configs`` maps overrides to per-fold accuracies."""
    rng = np.random.default_rng(seed)
    num = 0
    for overrides, accuracies in configs.items():
        for fold, accuracy in enumerate(accuracies):
            _run(root / f"{num}_job", list(overrides), fold, accuracy, rng, gap=0.1 + 0.01 * fold, record=record)
            num += 1
    return root


GOOD_0 = ("model.optimizer.lr=0.001", "seed=0")
GOOD_1 = ("model.optimizer.lr=0.001", "seed=1")
BAD = ("model.optimizer.lr=10", "seed=0")
KNOWN = {GOOD_0: [0.80, 0.82, 0.79, 0.81, 0.80], GOOD_1: [0.81, 0.80, 0.80, 0.82, 0.80],
         BAD: [0.55, 0.60, 0.52, 0.58, 0.57]}


def _pairs(result, a, b, test="bootstrap", metric="accuracy"):
    name = {GOOD_0: "model.optimizer.lr=0.001 seed=0", GOOD_1: "model.optimizer.lr=0.001 seed=1",
            BAD: "model.optimizer.lr=10 seed=0"}
    return [p for p in result["pairs"] if {p["a"], p["b"]} == {name[a], name[b]} and p["test"] == test
            and p["metric"] == metric]


def test_seed_only_difference_is_not_significant_and_a_clearly_better_configuration_is(tmp_path):
    result = write_comparison([_sweep(tmp_path, KNOWN)], tmp_path)
    (seeds,) = _pairs(result, GOOD_0, GOOD_1)
    assert seeds["n_folds"] == 5 and not seeds["significant"] and seeds["ci_low"] < 0 < seeds["ci_high"]
    assert seeds["role"] == "confirmatory" and seeds["conditional_on"].startswith("nothing")
    assert all(not p["significant"] for p in _pairs(result, GOOD_0, GOOD_1, "mcnemar_exact"))
    # the configurations' family: 3 pairs x 3 metrics over folds (no gap: predictions.csv has no group columns);
    # the trained models' family: 3 pairs x 5 folds of McNemar, corrected among themselves
    family = result["family"]
    assert family["size"] == 3 * 3 and family["interval_level"] == pytest.approx(1 - 0.05 / 9)
    assert family["models_size"] == 15 and family["models_interval_level"] == pytest.approx(1 - 0.05 / 15)
    assert all(p["interval_level"] == (family["interval_level"] if p["test"] != "mcnemar_exact"
                                       else family["models_interval_level"]) for p in result["pairs"])
    for good in (GOOD_0, GOOD_1):
        (better,) = _pairs(result, good, BAD)
        assert better["a"].endswith(good[1]) and better["significant"] and better["p_adjusted"] < 0.05
        assert better["difference"] == pytest.approx(np.mean(KNOWN[good]) - np.mean(KNOWN[BAD]))
        assert better["ci_low"] > 0  # the simultaneous interval agrees with the verdict here
        per_fold = _pairs(result, good, BAD, "mcnemar_exact")
        assert len(per_fold) == 5 and all(p["significant"] and p["difference"] > 0.15 for p in per_fold)
    # configurations: best accuracy first, a two-level bootstrap interval wider than the t interval over
    # folds (which ignores test-set sampling), the sample std over folds
    configs = result["configurations"]
    assert configs["config"].iloc[-1] == "model.optimizer.lr=10 seed=0"
    bad = configs.iloc[-1]
    half = stats.t.ppf(0.975, 4) * np.std(KNOWN[BAD], ddof=1) / math.sqrt(5)
    assert bad["accuracy"] == pytest.approx(np.mean(KNOWN[BAD]))
    assert bad["accuracy_std"] == pytest.approx(np.std(KNOWN[BAD], ddof=1))
    assert bad["accuracy_high"] - bad["accuracy_low"] > 2 * half
    assert bad["gap"] == pytest.approx(0.12) and bad["ece"] > 0


def test_files_are_written_as_strict_json_csv_markdown_and_plot(tmp_path):
    sweep = _sweep(tmp_path / "sweep", {GOOD_0: [0.8, 0.82, 0.79], BAD: [0.5, 0.55, 0.52]})
    (sweep / "3_job" / "bias_report.json").write_text(json.dumps({"gaps": []}))  # one fold without a gap
    write_comparison([sweep], sweep)
    rows = json.loads((sweep / "comparison.json").read_text(),
                      parse_constant=lambda c: pytest.fail(f"non-JSON constant {c}"))
    # 3 metrics across folds (the gap cannot be resampled: no group columns) + 3 folds of McNemar
    assert len(rows) == 3 + 3 and {"a", "b", "metric", "difference", "ci_low", "ci_high", "p_value", "test",
                                   "p_adjusted", "role", "interval_level"} <= set(rows[0])
    assert {r["metric"] for r in rows if r["test"] == "bootstrap"} == {"accuracy", "macro_f1", "ece"}
    assert rows[-1]["n_folds"] is None and rows[-1]["fold"] == 2  # missing figures are null, not NaN
    table = pd.read_csv(sweep / "comparison.csv")
    assert len(table) == 6 and set(table["test"]) == {"bootstrap", "mcnemar_exact"}
    markdown = (sweep / "comparison.md").read_text()
    assert "two-level bootstrap" in markdown and "McNemar" in markdown and "| model.optimizer.lr=0.001 | 3 |" in markdown
    assert "sample std" in markdown and "15 equal-width" in markdown and "two declared families" in markdown.lower()
    assert "gender gap leaves out 1 run(s)" in markdown
    assert (sweep / "comparison.png").stat().st_size > 5000
    assert len(pd.read_csv(sweep / "comparison_configurations.csv")) == 2


def test_failed_untested_and_unreadable_runs_are_left_out_and_named(tmp_path):
    rng = np.random.default_rng(0)
    for fold in range(3):
        _run(tmp_path / f"a{fold}", ["model.optimizer.lr=0.1"], fold, 0.8, rng)
        _run(tmp_path / f"b{fold}", ["model.optimizer.lr=0.2"], fold, 0.7, rng)
    (tmp_path / "c0" / ".hydra").mkdir(parents=True)
    (tmp_path / "c0" / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(["model.optimizer.lr=0.3", "data.fold=0"]))
    (tmp_path / "c0" / "failed.json").write_text(json.dumps({"error": "RuntimeError: loss is nan"}))
    _run(tmp_path / "d0", ["model.optimizer.lr=0.4"], 0, 0.8, rng)
    (tmp_path / "d0" / "predictions.csv").write_text("path,label\n/data/img_0.jpg,with_cloth_mask\n")
    result = write_comparison([tmp_path], tmp_path / "out")
    assert set(result["runs"]["config"]) == {"model.optimizer.lr=0.1", "model.optimizer.lr=0.2"}
    notes = "\n".join(result["notes"])
    assert "loss is nan" in notes and "cannot be read" in notes and "older maskdet" in notes
    assert "Notes" in (tmp_path / "out" / "comparison.md").read_text()


def test_recorded_runs_tested_on_moved_images_get_no_mcnemar(tmp_path):
    """Same fingerprint (the same images' contents), other paths: pooled, but McNemar cannot pair the images."""
    rng = np.random.default_rng(0)
    for fold in range(3):
        _run(tmp_path / f"a{fold}", ["model.optimizer.lr=0.1"], fold, 0.8, rng, record=_record())
        _run(tmp_path / f"b{fold}", ["model.optimizer.lr=0.2"], fold, 0.7, rng, prefix="moved", record=_record())
    result = write_comparison([tmp_path], tmp_path / "out")
    assert {p["test"] for p in result["pairs"]} == {"bootstrap"}  # no McNemar
    notes = "\n".join(result["notes"])
    assert "tested on different images" in notes and "resampled independently" in notes


def test_nadeau_bengio_inflates_the_variance_and_matches_the_formula():
    d = [0.1, 0.2, 0.3]
    result = corrected_t_test(d, n_train=100, n_test=50)
    se = math.sqrt((1 / 3 + 50 / 100) * np.var(d, ddof=1))
    assert result["p_value"] == pytest.approx(2 * stats.t.sf(0.2 / se, 2))
    assert result["ci_high"] - 0.2 == pytest.approx(stats.t.ppf(0.975, 2) * se)
    assert result["p_value"] > stats.ttest_1samp(d, 0).pvalue  # the plain paired t-test is more optimistic
    assert corrected_t_test([0.0, 0.0, 0.0], 100, 50)["p_value"] == 1.0
    assert math.isnan(corrected_t_test([0.05, 0.05, 0.05], 100, 50)["p_value"])


def test_holm_and_mcnemar_known_values():
    assert holm([0.01, 0.04, 0.03, math.nan])[:3] == pytest.approx([0.03, 0.06, 0.06])
    assert math.isnan(holm([0.01, math.nan])[1])

    def table(both, a_only, b_only, neither):
        a = np.array([1] * both + [1] * a_only + [0] * b_only + [0] * neither, bool)
        b = np.array([1] * both + [0] * a_only + [1] * b_only + [0] * neither, bool)
        return mcnemar_exact(a, b)

    result = table(20, 10, 2, 8)
    assert result["p_value"] == pytest.approx(2 * stats.binom.cdf(2, 12, 0.5))  # exact two-sided, 10 vs 2
    assert result["difference"] == pytest.approx(8 / 40)
    # Newcombe's square-and-add interval for Bentur et al. (2009), Fagerland, Lydersen & Laake ch. 8
    bentur = table(1, 1, 7, 12)
    assert (bentur["ci_low"], bentur["ci_high"]) == pytest.approx((-0.507, -0.026), abs=1e-3)
    assert table(30, 0, 0, 10)["p_value"] == 1.0
    assert table(31, 5, 0, 0)["ci_high"] > 5 / 36  # not stuck at the observed difference


def test_job_folder_names_say_what_the_sweep_varies():
    overrides = ["data.fold=2", "model.optimizer.lr=0.01", "data.image_size=32", "paths.log_dir=/tmp/x"]
    argv = ["-m", "data.fold=0,1,2", "model.optimizer.lr=0.001,0.01", "data.image_size=32"]
    assert job_name(3, overrides, None, argv) == "3_lr-0.01+fold-2"
    assert job_name(3, overrides, {"data.fold": "range(0,3)"}, ["+experiment=custom_cnn_kfold"]) == "3_fold-2"
    # a launcher's worker sees no sweep on its command line: every override that is not a path
    assert job_name(3, overrides, None, ["--process-name", "w"]) == "3_lr-0.01+image_size-32+fold-2"
    assert job_name(0, ["data.root=/a b/c"], None, ["data.root=/a b/c,/d"]) == "0_root-a_b_c"
    assert job_name(0, ["model.lr=1", "optimizer.lr=2"], None, ["model.lr=1,3", "optimizer.lr=2,4"]) \
        == "0_model.lr-1+optimizer.lr-2"
    assert len(job_name(7, [f"k{i}=" + "v" * 30 for i in range(9)], None, [])) <= 82
    assert job_name(5, [], None, []) == "5"
    # added and deleted keys: the added key is named without its +, a deletion is no part of the name
    assert job_name(4, ["+data.subset.gender=female", "~logger", "seed=1"], None, ["-m", "seed=0,1"]) == "4_seed-1"
    assert job_name(4, ["+data.subset.gender=female", "~logger"], None, []) == "4_gender-female"


def test_cv_in_job_folds_and_named_job_folders_are_collected(tmp_path):
    rng = np.random.default_rng(1)
    for num, lr in enumerate(["0.1", "0.2"]):
        job = tmp_path / f"{num}_lr={lr}"
        (job / ".hydra").mkdir(parents=True)
        (job / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump([f"model.optimizer.lr={lr}"]))
        for fold in range(3):
            _run(job / f"fold_{fold}", [], fold, 0.7 + 0.05 * num, rng)
            (job / f"fold_{fold}" / ".hydra" / "overrides.yaml").unlink()
    result = write_comparison([tmp_path], tmp_path)
    assert sorted(result["runs"]["config"].value_counts()) == [3, 3]
    assert len([p for p in result["pairs"] if p["test"] == "mcnemar_exact"]) == 3
    for num in (10, 2):
        _run(tmp_path / "sweep" / f"{num}_lr=0.1,fold={num}", ["model.optimizer.lr=0.1"], num, 0.7, rng)
    assert list(collect_runs(tmp_path / "sweep")["fold"]) == [2, 10]  # job order, not name order


def test_command_line_compares_run_folders_and_refuses_when_none_is_usable(tmp_path):
    sweep = _sweep(tmp_path / "sweep", {GOOD_0: [0.8, 0.82], BAD: [0.5, 0.55]})
    env = {**cli_env(tmp_path, tmp_path)}
    ok = commands.run([sys.executable, "-m", "maskdet.compare", str(sweep / "0_job"), str(sweep / "2_job"),
                         "--out", str(tmp_path / "two")], cwd=REPO, env=env, capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert (tmp_path / "two" / "comparison.json").is_file() and "McNemar" in ok.stdout
    (tmp_path / "empty" / "logs").mkdir(parents=True)
    bad = commands.run([sys.executable, "-m", "maskdet.compare", str(tmp_path / "empty")], cwd=REPO, env=env,
                         capture_output=True, text=True)
    assert bad.returncode == 1 and "Traceback" not in bad.stderr
    assert "No usable runs to compare in" in bad.stderr and "predictions.csv" in bad.stderr


@pytest.mark.slow
def test_a_real_multirun_writes_the_comparison_and_seeds_alone_do_not_differ(tiny_dataset, cache_dir, tmp_path):
    result = commands.run(
        [sys.executable, "-m", "maskdet.train", "-m", "data=folder", f"data.root={tiny_dataset}", "data.num_folds=3",
         "trainer.max_epochs=1", "~logger", "callbacks.explanations=null", "seed=0,1", "data.fold=0,1,2",
         "comparison.correction=fdr_bh", "comparison.n_boot=500"],  # the sweep's comparison options (conf/comparison)
        cwd=REPO, env=cli_env(cache_dir, tmp_path), capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    (sweep,) = (tmp_path / "outputs").glob("*/multiruns/*")
    records = [json.loads(m.read_text())["tested_on"] for m in sweep.glob("*/metrics.json")]
    assert len(records) == 6 and len({r["fingerprint"] for r in records}) == 1  # one test split, recorded
    assert {r["trainer"]["max_epochs"] for r in records} == {1}
    names = sorted(p.name for p in sweep.iterdir() if (p / ".hydra").is_dir())
    assert names == sorted(f"{n}_seed-{s}+fold-{f}" for n, (s, f) in enumerate((s, f) for s in (0, 1) for f in range(3)))
    runs = collect_runs(sweep)
    assert sorted(runs["fold"]) == [0, 0, 1, 1, 2, 2] and (runs["status"] == "ok").all()
    for name in ("comparison.md", "comparison.csv", "comparison.json", "comparison.png", "cv_summary.md"):
        assert (sweep / name).is_file(), name
    rows = json.loads((sweep / "comparison.json").read_text())
    declared = (sweep / "comparison.md").read_text()
    assert "Benjamini-Hochberg" in declared and "500 resamples" in declared  # comparison.* reached the report
    assert {(r["a"], r["b"]) for r in rows} in ({("seed=0", "seed=1")}, {("seed=1", "seed=0")})
    assert len([r for r in rows if r["test"] == "mcnemar_exact"]) == 3  # every fold tested on the same images
    accuracy = [r for r in rows if r["metric"] == "accuracy"]
    assert accuracy and not any(r["significant"] for r in accuracy)  # seeds alone: no real difference


# ---------------------------------------------------------------- like with like (issue 20, point 4)
def test_two_sweeps_of_different_test_data_are_refused_naming_their_runs(tmp_path):
    first = _sweep(tmp_path / "sweep_a", {GOOD_0: [0.8, 0.82], BAD: [0.5, 0.55]}, record=_record("faces-v1"))
    second = _sweep(tmp_path / "sweep_b", {GOOD_0: [0.7, 0.72]}, record=_record("faces-v2"))
    with pytest.raises(DataError) as refused:
        write_comparison([first, second], tmp_path / "out")
    message = str(refused.value)
    assert "not tested on the same data" in message and "different images or labels" in message
    assert all(str(first / f"{n}_job") in message for n in range(4)) and str(second / "0_job") in message
    assert "\n" not in message and not (tmp_path / "out" / "comparison.md").exists()
    # other class names: said so
    other = _sweep(tmp_path / "sweep_c", {GOOD_0: [0.7, 0.72]}, record=_record("faces-v1", classes=CLASSES[:2]))
    with pytest.raises(DataError, match="class names differ"):
        write_comparison([first, other], tmp_path / "out")
    # older runs (no record) with different test images: refused by what their predictions.csv lists
    rng = np.random.default_rng(0)
    _run(tmp_path / "old" / "a", ["seed=0"], 0, 0.8, rng)
    _run(tmp_path / "old" / "b", ["seed=1"], 0, 0.8, rng, prefix="other")
    with pytest.raises(DataError, match="predictions.csv"):
        write_comparison([tmp_path / "old"], tmp_path / "out")


def test_runs_without_a_record_are_left_out_beside_recorded_ones_and_named(tmp_path):
    sweep = _sweep(tmp_path / "sweep", {GOOD_0: [0.8, 0.82], BAD: [0.5, 0.55]}, record=_record())
    _run(sweep / "4_old", list(BAD), 2, 0.5, np.random.default_rng(3))
    result = write_comparison([sweep], sweep)
    assert str(sweep / "4_old") not in set(result["runs"]["run_dir"]) and len(result["runs"]) == 4
    assert any("older maskdet" in n and str(sweep / "4_old") in n for n in result["notes"])


def test_a_configuration_whose_runs_differ_in_max_epochs_is_split_and_named(tmp_path):
    sweep = _sweep(tmp_path / "sweep", {GOOD_0: [0.8, 0.82, 0.79], BAD: [0.5, 0.55, 0.52]}, record=_record())
    resumed = json.loads((sweep / "2_job" / "metrics.json").read_text())
    resumed["tested_on"]["trainer"]["max_epochs"] = 40  # a job resumed with trainer.max_epochs=40
    (sweep / "2_job" / "metrics.json").write_text(json.dumps(resumed))
    result = write_comparison([sweep], sweep)
    configs = set(result["configurations"]["config"])
    assert configs == {"model.optimizer.lr=0.001 [trainer.max_epochs=20]", "model.optimizer.lr=0.001 "
                       "[trainer.max_epochs=40]", "model.optimizer.lr=10"}
    (note,) = [n for n in result["notes"] if "different trainer settings" in n]
    assert str(sweep / "2_job") in note and str(sweep / "0_job") in note
    # runs kept apart are not repeats of each other (data.fold_seed): they are compared
    assert not any("data.fold_seed" in n for n in result["notes"])
    assert any(n.startswith("model.optimizer.lr=0.001 [trainer.max_epochs=") and "no fold run by both" in n
               for n in result["notes"])  # considered as a pair (they share no fold), not skipped as repeats
    # the cv summary does not pool them either, and says why
    runs, summary = write_summary(sweep)
    assert set(summary["config"]) == configs
    assert "different trainer settings" in (sweep / "cv_summary.md").read_text()


def test_repeats_of_a_configuration_are_not_compared_with_each_other(tmp_path):
    """A repeated k-fold of two learning rates (data.fold_seed=0,1): the configurations' family holds the
    two learning rates' pair within each repeat (fold k the same data); repeats of one learning rate, and
    pairs across repeats, are not tested, and notes say so."""
    good, bad = "model.optimizer.lr=0.001", "model.optimizer.lr=10"
    sweep = _sweep(tmp_path / "sweep", {(good, "data.fold_seed=0"): [0.80, 0.82, 0.79], (good, "data.fold_seed=1"): [0.81, 0.80, 0.80],
                                        (bad, "data.fold_seed=0"): [0.55, 0.60, 0.52], (bad, "data.fold_seed=1"): [0.58, 0.57, 0.54]},
                   record=_record())
    result = write_comparison([sweep], sweep)
    pairs = {frozenset((p["a"], p["b"])) for p in result["pairs"]}
    assert pairs == {frozenset((f"data.fold_seed={r} {good}", f"data.fold_seed={r} {bad}")) for r in (0, 1)}, pairs
    assert result["family"]["size"] == 2 * 3
    assert any(n.startswith("2 pairs of configurations on different partitions") for n in result["notes"])
    notes = [n for n in result["notes"] if "differ only in data.fold_seed" in n]
    assert len(notes) == 2 and any(f"configuration ({good})" in n for n in notes)


def test_cv_summary_keeps_runs_of_different_test_data_apart(tmp_path):
    _sweep(tmp_path, {GOOD_0: [0.8, 0.82]}, record=_record("faces-v1"))
    (tmp_path / "1_job" / "metrics.json").write_text(json.dumps(
        {"val": {}, "test": {"test/acc": 0.9}, "tested_on": _record("faces-v2")}))
    runs, summary = write_summary(tmp_path)
    assert len(summary) == 2 and all("[test data " in c for c in summary["config"])
    markdown = (tmp_path / "cv_summary.md").read_text()
    assert "tested on different data" in markdown and "2 different test sets" in markdown


def test_runs_without_an_ece_are_named_and_the_figure_counts_runs(tmp_path):
    sweep = _sweep(tmp_path / "sweep", {GOOD_0: [0.8, 0.82, 0.79], BAD: [0.5, 0.55, 0.52]}, record=_record())
    predictions = pd.read_csv(sweep / "1_job" / "predictions.csv")
    predictions.loc[3, "confidence"] = math.nan
    predictions.to_csv(sweep / "1_job" / "predictions.csv", index=False)
    predictions = pd.read_csv(sweep / "4_job" / "predictions.csv")
    predictions.loc[0, "confidence"] = math.inf
    predictions.to_csv(sweep / "4_job" / "predictions.csv", index=False)
    result = write_comparison([sweep], sweep)
    configs = result["configurations"].set_index("config")
    assert list(configs["ece_n"]) == [2, 2] and list(configs["accuracy_n"]) == [3, 3]
    assert all(math.isfinite(v) for v in configs["ece"])
    (note,) = [n for n in result["notes"] if n.startswith("ECE")]
    assert str(sweep / "1_job") in note and str(sweep / "4_job") in note and "not numbers in [0, 1]" in note
    assert "ECE leaves out 2 run(s)" in (sweep / "comparison.md").read_text()


# ---------------------------------------------------------------- text from files, writes (issue 20, point 2)
CRAFTED = "@cmd=x\n## Injected heading\n<img src=x onerror=alert(1)>|cell\r"


def test_a_crafted_override_lands_escaped_one_line_per_row(tmp_path):
    sweep = _sweep(tmp_path / "sweep", {(CRAFTED,): [0.8, 0.82], ("@cmd=$\\alpha$",): [0.6, 0.62]},
                   record=_record())
    write_comparison([sweep], sweep)
    write_summary(sweep)
    for name in ("comparison.md", "cv_summary.md"):
        lines = (sweep / name).read_text().splitlines()
        assert not any("<img" in line or line.startswith("## Injected") for line in lines), name
        crafted = [line for line in lines if "Injected" in line]
        escaped = "@cmd=x ## Injected heading &lt;img src=x onerror=alert(1)&gt;\\|cell"
        assert crafted and all(escaped in line for line in crafted), name
        assert all(line.startswith("| ") and line.endswith(" |") or line.startswith("- ") for line in crafted), name
    table = pd.read_csv(sweep / "comparison.csv")
    assert set(table["a"]) | set(table["b"]) == {"'@cmd=$\\alpha$", "'@cmd=x ## Injected heading <img src=x "
                                                 "onerror=alert(1)>|cell"}  # a spreadsheet shows them as text
    configurations = pd.read_csv(sweep / "comparison_configurations.csv")
    assert "'@cmd=$\\alpha$" in set(configurations["config"])
    assert (sweep / "comparison.png").stat().st_size > 5000  # the $...$ name did not break the figure


def test_compare_replaces_a_planted_symlink_and_leaves_its_target_alone(tmp_path):
    sweep = _sweep(tmp_path / "sweep", {GOOD_0: [0.8, 0.82], BAD: [0.5, 0.55]}, record=_record())
    outside = tmp_path / "precious.txt"
    outside.write_text("do not touch\n")
    for name in ("comparison.md", "comparison.csv", "cv_summary.md"):
        (sweep / name).symlink_to(outside)
    result = commands.run([sys.executable, "-m", "maskdet.compare", str(sweep)], cwd=REPO,
                            env=cli_env(tmp_path, tmp_path), capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert outside.read_text() == "do not touch\n"
    assert not (sweep / "comparison.md").is_symlink() and "Comparison of configurations" in (sweep / "comparison.md").read_text()
    assert not (sweep / "comparison.csv").is_symlink()
    write_summary(sweep)
    assert outside.read_text() == "do not touch\n" and not (sweep / "cv_summary.md").is_symlink()


def test_the_command_line_refuses_different_test_data_with_a_message(tmp_path):
    first = _sweep(tmp_path / "a", {GOOD_0: [0.8, 0.82]}, record=_record("faces-v1"))
    second = _sweep(tmp_path / "b", {GOOD_0: [0.8, 0.82]}, record=_record("faces-v2"))
    result = commands.run([sys.executable, "-m", "maskdet.compare", str(first), str(second), "--out",
                             str(tmp_path / "out")], cwd=REPO, env=cli_env(tmp_path, tmp_path), capture_output=True,
                            text=True)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "not tested on the same data" in result.stderr and str(second / "0_job") in result.stderr


def test_a_trained_run_records_what_it_was_tested_on(tiny_run):
    """A real training run: metrics.json says which images (by content), classes and trainer settings."""
    metrics = json.loads((tiny_run / "metrics.json").read_text())
    record = metrics["tested_on"]
    predictions = pd.read_csv(tiny_run / "predictions.csv")
    assert record["test_images"] == len(predictions) > 0 and len(record["fingerprint"]) == 64
    assert record["class_names"] == metrics["class_names"]
    assert record["trainer"]["max_epochs"] == 2 and record["trainer"]["limit_test_batches"] == 1.0
    assert json.loads((tiny_run / "tested_on.json").read_text()) == record
    runs, _, notes = load_runs([tiny_run])
    assert runs["test_data"].item().startswith(record["fingerprint"][:12]) and not notes


def test_stale_reports_beside_failed_json_are_not_counted_as_a_result(tmp_path):
    sweep = _sweep(tmp_path / "sweep", {GOOD_0: [0.8, 0.82, 0.79], BAD: [0.5, 0.55, 0.52]}, record=_record())
    (sweep / "5_job" / "failed.json").write_text(json.dumps({"error": "RuntimeError: resume failed"}))
    result = write_comparison([sweep], sweep)
    assert str(sweep / "5_job") not in set(result["runs"]["run_dir"])
    assert any("resume failed" in note and str(sweep / "5_job") in note for note in result["notes"])


def test_a_job_resumed_with_more_epochs_is_not_pooled_with_its_sibling(tiny_run, tiny_dataset, cache_dir, tmp_path):
    """Real runs: two copies of one finished run as a sweep's jobs, one resumed with trainer.max_epochs=3."""
    from maskdet.train import train
    from tests.conftest import compose_train

    sweep = tmp_path / "sweep"
    for job in ("0_job", "1_job"):
        shutil.copytree(tiny_run, sweep / job)
    resumed = sweep / "1_job"
    train(compose_train(["data=folder", f"data.root={tiny_dataset}", "data.num_folds=3", "trainer.max_epochs=3",
                         "callbacks.explanations=null", f"ckpt_path={resumed / 'checkpoints' / 'last.ckpt'}"],
                        resumed, cache_dir))
    assert json.loads((resumed / "metrics.json").read_text())["tested_on"]["trainer"]["max_epochs"] == 3
    result = write_comparison([sweep], sweep)
    assert sorted(result["configurations"]["config"]) == ["(one configuration) [trainer.max_epochs=2]",
                                                          "(one configuration) [trainer.max_epochs=3]"]
    assert any("different trainer settings" in n and str(resumed) in n for n in result["notes"])


# ---------------------------------------------------------------- a sweep's comparison options (comparison.*)
def test_the_sweep_comparison_options_are_checked_before_training_and_default_as_the_command_does(tmp_path, cache_dir):
    import inspect

    from omegaconf import OmegaConf

    from maskdet.preflight import check_config

    defaults = OmegaConf.load(REPO / "maskdet" / "conf" / "comparison" / "default.yaml")
    signature = inspect.signature(write_comparison).parameters
    assert {k: signature[k].default for k in defaults} == OmegaConf.to_container(defaults)  # one set of defaults
    compose = functools.partial(compose_train, output_dir=tmp_path / "run", cache_dir=cache_dir)
    check_config(compose(["comparison.correction=fdr_bh", "comparison.alpha=0.1"]), "train")
    for override, words in [("+comparison.corection=fdr_bh", "Did you mean"),
                            ("comparison.correction=bonferroni", "holm"),
                            ("comparison.n_boot=50", "at least 200")]:
        with pytest.raises(ConfigError, match=words) as refused:
            check_config(compose([override]), "train")
        assert "comparison" in str(refused.value), refused.value
