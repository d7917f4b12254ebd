"""The bias audit: interval and test formulas, per-group reports, planted bias found, evaluate, the COMP6721 study's bias analysis."""

import json
import sys

import numpy as np
import pandas as pd
import pytest

from maskdet.evaluation.bias import audit, write_bias_report
from maskdet.evaluation.statistics import newcombe_interval, two_proportion_test, wilson_interval
from maskdet.train import train
from tests.conftest import REPO, cli_env, compose_train
from tests.helpers import commands

CLASSES = ["without_mask", "with_surgical_mask", "with_cloth_mask", "with_ffp2_mask"]


def test_the_comp6721_gaps_get_their_p_values():
    # 800 images per group (200 per class x 4): male 82 % vs female 73 %, white 77 % vs black 74 %
    _, p_gender = two_proportion_test(656, 800, 584, 800)
    _, p_race = two_proportion_test(616, 800, 592, 800)
    assert 1e-5 < p_gender < 5e-5
    assert 0.1 < p_race < 0.2
    low, high = newcombe_interval(656, 800, 584, 800)
    assert 0 < low < 0.09 < high
    low, high = newcombe_interval(616, 800, 592, 800)
    assert low < 0 < high


def test_wilson_interval_matches_the_textbook_value():
    low, high = wilson_interval(8, 10)
    assert (round(low, 3), round(high, 3)) == (0.490, 0.943)


def test_macro_f1_is_sklearn_s_and_torchmetrics_and_the_same_on_a_batch_of_resamples():
    import torch
    from sklearn.metrics import f1_score
    from torchmetrics.classification import MulticlassF1Score

    from maskdet.evaluation.metrics import macro_f1

    rng = np.random.default_rng(0)
    absent_from_both = only_predicted = 0
    for trial in range(40):
        n, classes = int(rng.integers(1, 30)), 5
        # classes 3 and 4 are rare or absent: some draws lack a class in the labels, the predictions or both
        y_true = rng.choice(classes, size=n, p=[0.4, 0.3, 0.2, 0.1, 0.0] if trial % 2 else [0.3, 0.3, 0.2, 0.1, 0.1])
        y_pred = np.where(rng.random(n) < 0.6, y_true, rng.choice(classes, size=n, p=[0.3, 0.3, 0.3, 0.1, 0.0]))
        expected = f1_score(y_true, y_pred, average="macro", zero_division=0)
        assert macro_f1(y_true, y_pred)[0] == pytest.approx(expected, abs=1e-12)
        trained = MulticlassF1Score(classes, average="macro")(torch.from_numpy(y_pred), torch.from_numpy(y_true))
        assert macro_f1(y_true, y_pred)[0] == pytest.approx(float(trained), abs=1e-6)
        names = np.array(CLASSES + ["no_face"])  # class names give the same figure as indices
        assert macro_f1(names[y_true], names[y_pred])[0] == pytest.approx(expected, abs=1e-12)
        resamples = rng.integers(0, n, size=(25, n))
        batch = macro_f1(y_true[resamples], y_pred[resamples])
        one_by_one = [f1_score(y_true[r], y_pred[r], average="macro", zero_division=0) for r in resamples]
        np.testing.assert_allclose(batch, one_by_one, atol=1e-12)
        absent_from_both += len(np.union1d(y_true, y_pred)) < classes
        only_predicted += len(np.setdiff1d(y_pred, y_true)) > 0
    assert absent_from_both >= 10 and only_predicted >= 5  # both kinds of absent class were tried


def _predictions(n_per_group: dict, accuracy: dict, seed=0, classes=CLASSES) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for (gender, race), n in n_per_group.items():
        for i in range(n):
            label = classes[i % len(classes)]
            right = rng.random() < accuracy[gender]
            prediction = label if right else classes[(classes.index(label) + 1) % len(classes)]
            rows.append({"path": f"{gender}_{race}_{i}.jpg", "label": label, "prediction": prediction,
                         "confidence": rng.uniform(0.5, 1.0), "gender": gender, "race": race, "age": 30, "age_group": "20-39"})
    return pd.DataFrame(rows)


def test_audit_finds_a_planted_gap_and_flags_small_groups(tmp_path):
    predictions = _predictions({("male", "white"): 400, ("female", "white"): 400, ("female", "others"): 10},
                               {"male": 0.9, "female": 0.6})
    report = write_bias_report(predictions, CLASSES, tmp_path, min_group_size=30, n_bootstrap=200,
                               metrics=["macro_f1", "ece"])
    gender = next(g for g in report["gaps"] if g["attribute"] == "gender")
    assert gender["best_group"] == "male" and gender["worst_group"] == "female"
    assert gender["significant"] and gender["gap_low"] > 0 and gender["p_value"] < 1e-6
    assert gender["worst_accuracy"] == pytest.approx(0.6, abs=0.06)
    rows = {(r["attribute"], r["group"]): r for r in report["groups"]}
    assert rows[("race", "others")]["n"] == 10 and not rows[("race", "others")]["ranked"]
    assert rows[("gender_x_race", "female/white")]["n"] == 400
    female = rows[("gender", "female")]
    assert female["accuracy_low"] < female["accuracy"] < female["accuracy_high"]
    assert female["macro_f1_low"] <= female["macro_f1"] <= female["macro_f1_high"]
    assert 0 <= female["ece_low"] <= female["ece_high"] <= 1
    assert {f"recall_{c}" for c in CLASSES} <= set(female)
    for name in ("bias_report.md", "bias_report.csv", "bias_report.json", "bias.png"):
        assert (tmp_path / name).is_file()
    markdown = (tmp_path / "bias_report.md").read_text()
    assert "| others * | 10 |" in markdown and "significant at 5 %" in markdown
    # every table says its n, interval method and level; ECE says its binning and that its interval is not one
    assert "| group | n | accuracy [95 % Wilson] | macro-F1 [95 % bootstrap] | ECE [95 % bootstrap] |" in markdown
    assert "15 equal-width confidence bins" in markdown and "no std" in markdown
    assert "| group | n | mean confidence | calibration gap [95 %] | Spiegelhalter z | p | p (holm) |" in markdown
    assert "one family of 2 tests" in markdown and "simultaneous at 97.5 %" in markdown
    assert any("others (n = 10) is under bias.min_group_size = 30" in w for w in report["warnings"])
    assert female["calibration_gap_low"] < female["calibration_gap"] < female["calibration_gap_high"]


def test_figures_that_did_not_change_do_not_move():
    """Accuracy, Wilson intervals, the bootstrap of macro-F1 and ECE (same seed), and each largest gap's z and
    raw p are the numbers the audit gave before the one-family, power and calibration changes."""
    predictions = _predictions({("male", "white"): 120, ("female", "white"): 90, ("female", "black"): 45,
                                ("male", "others"): 12}, {"male": 0.85, "female": 0.7}, seed=3)
    before = {  # maskdet ce30108, audit(predictions, CLASSES, n_bootstrap=200, seed=7)
        ("gender", "female"): (135, 95, 0.7037037037037037, 0.6219055356186972, 0.7742297431889779, 0.7013619167717529,
                               0.6256094746076017, 0.7912765979261168, 0.12774871847859232, 0.09507593198462004,
                               0.21388317799760656),
        ("gender", "male"): (132, 113, 0.8560606060606061, 0.7861088034666418, 0.9058743422979855, 0.8556257530631639,
                             0.7807785648190348, 0.9110700135063312, 0.13428423107581886, 0.09184965905932287,
                             0.19909452851684348),
        ("race", "black"): (45, 33, 0.7333333333333333, 0.5896116224686505, 0.8403509647893348, 0.7283709273182957,
                            0.5731819242848655, 0.8279373643597782, 0.19528553987653377, 0.15217982395063034,
                            0.3337077209887073)}
    keys = ("n", "correct", "accuracy", "accuracy_low", "accuracy_high", "macro_f1", "macro_f1_low", "macro_f1_high",
            "ece", "ece_low", "ece_high")
    for metrics in (["macro_f1", "ece"], ["macro_f1"]):  # the default leaves ECE out; macro-F1 does not move
        report = audit(predictions, CLASSES, n_bootstrap=200, seed=7, metrics=metrics)
        rows = {(r["attribute"], r["group"]): r for r in report["groups"]}
        for where, values in before.items():
            for key, value in zip(keys, values):
                if key in rows[where]:
                    assert rows[where][key] == value, (where, key)
        gaps = {g["attribute"]: g for g in report["gaps"]}
        for attribute, gap, z, p in (("gender", 0.15235690235690236, 2.9999494821777426, 0.002700243871853302),
                                     ("race", 0.05238095238095242, 0.7654015932812621, 0.44403244451015966),
                                     ("gender_x_race", 0.1694444444444444, 2.96142426376797, 0.0030621979548575854)):
            assert (gaps[attribute]["gap"], gaps[attribute]["z"], gaps[attribute]["p_value_raw"]) == (gap, z, p)


def test_correction_and_primary_metric_are_bias_options_checked_before_training(tmp_path, cache_dir):
    from maskdet.errors import ConfigError
    from maskdet.preflight import check_config

    check_config(compose_train(["bias.correction=fdr_bh", "bias.alpha=0.1", "bias.primary_metric=accuracy"],
                               tmp_path / "run", cache_dir), "train")
    with pytest.raises(ConfigError, match="bias.correction='bonferroni' is not accepted"):
        check_config(compose_train(["bias.correction=bonferroni"], tmp_path / "run", cache_dir), "train")
    with pytest.raises(ConfigError, match="Unknown config key bias.primary"):
        check_config(compose_train(["+bias.primary=accuracy"], tmp_path / "run", cache_dir), "train")
    assert not (tmp_path / "run").exists()


def lowest_recall(y_true, y_pred, confidence):
    """A per-group metric from "the user's own package", named in bias.metrics by its import path."""
    y_true, y_pred = np.atleast_2d(y_true), np.atleast_2d(y_pred)
    recalls = [((y_true == c) & (y_pred == c)).sum(1) / np.maximum((y_true == c).sum(1), 1) for c in np.unique(y_true)]
    return np.min(recalls, axis=0)


lowest_recall.title = "lowest recall"


def one_value_for_every_row(y_true, y_pred, confidence):
    """A wrong figure: one mean over every resample instead of one value per resample."""
    return np.mean(np.asarray(y_true) == np.asarray(y_pred))


def test_a_new_per_group_figure_is_one_function_and_one_config_entry(tmp_path):
    """A figure registered with @group_metric, or named by import path, and listed in bias.metrics gets its
    value, its bootstrap interval, its CSV columns and its markdown column, with nothing else changed."""
    from maskdet.evaluation.metrics import GROUP_METRICS, group_metric

    @group_metric("error_rate", "error rate")
    def error_rate(y_true, y_pred, confidence):
        return (np.atleast_2d(y_true) != np.atleast_2d(y_pred)).mean(1)

    predictions = _predictions({("male", "white"): 200, ("female", "white"): 200}, {"male": 0.9, "female": 0.6})
    try:
        report = write_bias_report(predictions, CLASSES, tmp_path, n_bootstrap=200,
                                   metrics=["error_rate", "ece", "tests.test_bias.lowest_recall"])
    finally:
        del GROUP_METRICS["error_rate"]
    female = next(r for r in report["groups"] if r["group"] == "female")
    assert female["error_rate"] == pytest.approx(1 - female["accuracy"])
    assert female["error_rate_low"] < female["error_rate"] < female["error_rate_high"]
    assert female["lowest_recall"] == pytest.approx(min(female[f"recall_{c}"] for c in CLASSES))
    assert female["lowest_recall_low"] <= female["lowest_recall"] <= female["lowest_recall_high"]
    assert "macro_f1" not in female and report["metrics"] == ["error_rate", "ece", "lowest_recall"]
    assert {"error_rate_low", "error_rate_high", "ece", "lowest_recall"} <= set(pd.read_csv(tmp_path / "bias_report.csv").columns)
    assert "| group | n | accuracy [95 % Wilson] | error rate [95 % bootstrap] | ECE [95 % bootstrap] | " \
           "lowest recall [95 % bootstrap] |" in (tmp_path / "bias_report.md").read_text()


def test_an_unknown_per_group_metric_is_refused_before_training(tmp_path, cache_dir):
    from maskdet.errors import ConfigError
    from maskdet.preflight import check_config

    cfg = compose_train(["bias.metrics=[macro_f1,auroc]"], tmp_path / "run", cache_dir)
    with pytest.raises(ConfigError, match=r"bias.metrics: auroc is not a per-group metric .*use any of macro_f1, ece, "
                                          "or the import path of a function"):
        check_config(cfg, "train")
    # figures that would fail or mislead only after training: one value for all resamples, 1-D input only
    for figure, says in (("tests.test_bias.one_value_for_every_row", r"shapes \(\) and \(\)"),
                         ("sklearn.metrics.balanced_accuracy_score", "fails on a small sample")):
        with pytest.raises(ConfigError, match=says):
            check_config(compose_train([f"bias.metrics=[{figure}]"], tmp_path / "run", cache_dir), "train")
    assert not (tmp_path / "run").exists()


def test_no_gap_when_groups_are_alike():
    predictions = _predictions({("male", "white"): 300, ("female", "black"): 300}, {"male": 0.8, "female": 0.8}, seed=1)
    report = audit(predictions, CLASSES, n_bootstrap=100)
    assert not any(g.get("significant") for g in report["gaps"])


def test_predictions_without_demographics_give_a_report_that_says_so(tmp_path):
    predictions = _predictions({("unknown", "unknown"): 50}, {"unknown": 0.7}).assign(age_group="unknown")
    report = write_bias_report(predictions, CLASSES, tmp_path, n_bootstrap=50)
    assert report["groups"] == [] and len(report["notes"]) == 4
    assert "no demographic information" in (tmp_path / "bias_report.md").read_text()


def test_binary_tasks_get_parity_and_equalized_odds():
    classes = ["without_mask", "with_mask"]
    predictions = _predictions({("male", "white"): 200, ("female", "white"): 200}, {"male": 0.95, "female": 0.7}, classes=classes)
    gender = next(g for g in audit(predictions, classes, n_bootstrap=50)["gaps"] if g["attribute"] == "gender")
    assert gender["equalized_odds_difference"] > 0.1
    assert 0 <= gender["demographic_parity_difference"] <= 1


def test_bias_figure_puts_every_panel_on_one_accuracy_axis_with_the_overall_accuracy(tmp_path):
    from matplotlib.text import Text
    from PIL import Image

    from maskdet.evaluation.bias import plot

    predictions = _predictions({("male", "white"): 300, ("female", "black"): 200, ("female", "others"): 12},
                               {"male": 0.95, "female": 0.55}).assign(age_group=lambda f: np.where(f.index % 2, "0-19", "60+"))
    report = audit(predictions, CLASSES, n_bootstrap=20)
    fig = plot(report, tmp_path / "bias.png")
    axes = fig.axes
    assert [ax.get_title(loc="left") for ax in axes] == ["gender", "race", "age group", "gender × race"]
    limits = {ax.get_xlim() for ax in axes}
    assert len(limits) == 1  # one shared accuracy axis, whatever each attribute's spread
    (low, high), = limits
    assert low <= min(r["accuracy_low"] for r in report["groups"]) and high >= 1.0
    overall = (predictions["label"] == predictions["prediction"]).mean()
    for ax in axes:  # the overall accuracy as a vertical reference line in every panel
        assert any(list(line.get_xdata()) == pytest.approx([overall, overall]) for line in ax.get_lines()), ax.get_title()
    (legend,) = fig.legends
    entries = [t.get_text() for t in legend.get_texts()]
    assert len(entries) == 3 and "not ranked" in entries[1] and f"overall accuracy ({overall:.3f})" == entries[2]
    # readable at paper size: a 6.5 in text width, no text under 8 pt, and the file is that size at 200 dpi
    assert fig.get_figwidth() == 6.5
    texts = [t for t in fig.findobj(Text) if t.get_text() and t.get_visible()]
    assert min(t.get_fontsize() for t in texts) >= 8
    assert Image.open(tmp_path / "bias.png").size[0] == 1300


def test_confusion_matrix_counts_and_row_normalised_fractions(tmp_path):
    from maskdet.evaluation.reports import confusion_matrix_figure, save_confusion_matrix

    classes = ["a", "b", "c"]  # 'c' has no test image: its row of fractions is empty, not zeros
    predictions = pd.DataFrame({"label": ["a"] * 4 + ["b"] * 2, "prediction": ["a", "a", "a", "b", "b", "c"]})
    counts = save_confusion_matrix(predictions, classes, tmp_path)
    saved = pd.read_csv(tmp_path / "confusion_matrix.csv", index_col=0)
    assert saved.index.name == "true" and list(saved.columns) == classes
    assert saved.to_numpy().tolist() == counts.tolist() == [[3, 1, 0], [0, 1, 1], [0, 0, 0]]
    fig = confusion_matrix_figure(counts, classes)
    left, right = fig.axes
    assert "counts" in left.get_title() and "row-normalised" in right.get_title()
    fractions = right.get_images()[0].get_array()
    assert fractions[0].tolist() == [0.75, 0.25, 0.0] and fractions[1].tolist() == [0.0, 0.5, 0.5]
    assert [t.get_text() for t in right.texts][-3:] == ["no images"] * 3
    assert [t.get_text() for t in left.texts][:3] == ["3", "1", "0"]


def test_report_figures_reach_tensorboard_downscaled_to_a_card_width(tmp_path):
    import lightning as L
    from lightning.pytorch.loggers import TensorBoardLogger
    from PIL import Image
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from maskdet.evaluation.holdout import TENSORBOARD_WIDTH, _log_to_tensorboard, tensorboard_image
    from maskdet.evaluation.reports import save_confusion_matrix

    predictions = _predictions({("male", "white"): 60, ("female", "white"): 60}, {"male": 0.9, "female": 0.7})
    report = write_bias_report(predictions, CLASSES, tmp_path, n_bootstrap=20)
    save_confusion_matrix(predictions, CLASSES, tmp_path)
    logger = TensorBoardLogger(tmp_path / "tb")
    trainer = L.Trainer(logger=logger, enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False)
    _log_to_tensorboard(trainer, report, tmp_path)
    events = EventAccumulator(logger.log_dir, size_guidance={"images": 0}).Reload()
    for tag in ("bias", "confusion_matrix"):
        (image,) = events.Images(tag)
        width, height = Image.open(tmp_path / f"{tag}.png").size
        assert width > TENSORBOARD_WIDTH  # drawn for print, so it must be scaled down for the card
        assert image.width == TENSORBOARD_WIDTH and image.height == round(height * TENSORBOARD_WIDTH / width)
    small = tmp_path / "small.png"
    Image.new("RGB", (300, 200), "white").save(small)
    assert tensorboard_image(small).shape == (200, 300, 3)  # small pictures are not blown up


@pytest.mark.slow
@pytest.mark.parametrize("strength, expect_gap", [(1.0, True), (0.0, False)])
def test_planted_synthetic_bias_is_found_and_a_clean_set_comes_back_clean(strength, expect_gap, cache_dir, tmp_path):
    # seed 4 drew a weak planted effect (gap 0.04-0.09); 5 and 6: 0.16, 0.19 (400 per class, 10 epochs). With 300 per
    # class and 8 epochs (a third less time), seed 5: planted gap 0.20 [0.10, ...], clean gap 0.05 [-0.04, ...]
    cfg = compose_train(["data.source.per_class=300", "data.source.size=40", "data.source.seed=5",
                         f"data.source.bias={{attribute: gender, group: 1, strength: {strength}}}",
                         "data.num_folds=5", "trainer.max_epochs=8", "~logger", "~callbacks.explanations",
                         "bias.n_bootstrap=200",
                         "bias.attributes=[gender]"],  # the study's declared family: the planted attribute's one test
                        tmp_path, cache_dir)
    train(cfg)
    report = json.loads((tmp_path / "bias_report.json").read_text())
    gaps = {g["attribute"]: g for g in report["gaps"]}
    if expect_gap:
        assert gaps["gender"]["worst_group"] == "female" and gaps["gender"]["significant"], gaps["gender"]
        assert gaps["gender"]["gap_low"] > 0
    else:
        assert not any(g.get("significant") for g in gaps.values()), gaps


@pytest.fixture(scope="module")
def trained_run(small_dataset, tmp_path_factory):
    cache = tmp_path_factory.mktemp("evalcache")
    root = tmp_path_factory.mktemp("evalrun")
    result = commands.run([sys.executable, "-m", "maskdet.train", "data=folder", f"data.root={small_dataset}",
                             "data.num_folds=3", "trainer.max_epochs=2", "task_name=toeval", "~logger"],
                            cwd=REPO, env=cli_env(cache, root), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    (run,) = (root / "outputs" / "toeval" / "runs").iterdir()
    return run, cache, root


@pytest.mark.slow
def test_evaluate_reproduces_the_run_and_evaluates_subsets(trained_run, small_dataset):
    run, cache, root = trained_run
    ckpt = json.loads((run / "metrics.json").read_text())["best_checkpoint"]
    env = cli_env(cache, root)
    result = commands.run([sys.executable, "-m", "maskdet.evaluate", f"ckpt_path={ckpt}", "task_name=ev"],
                            cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    (ev,) = (root / "outputs" / "ev" / "runs").iterdir()
    for name in ("metrics.json", "predictions.csv", "classification_report.txt", "confusion_matrix.png",
                 "bias_report.md", "bias.png", "data_report.json"):
        assert (ev / name).is_file(), name
    assert json.loads((ev / "metrics.json").read_text())["test"]["test/acc"] == pytest.approx(
        json.loads((run / "metrics.json").read_text())["test"]["test/acc"], abs=1e-6)
    original = pd.read_csv(run / "predictions.csv")

    result = commands.run([sys.executable, "-m", "maskdet.evaluate", f"ckpt_path={ckpt}", "task_name=evsub",
                             "+data.subset.gender=female", "data.cap_per_class=5"],
                            cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    (sub,) = (root / "outputs" / "evsub" / "runs").iterdir()
    subset = pd.read_csv(sub / "predictions.csv")
    assert len(subset) == 20 and (subset["gender"] == "female").all()
    assert set(subset["path"]) <= set(original["path"])  # test images only, never a training image


def test_a_command_s_data_overrides_apply_on_top_of_the_run_s_own_data_config(tmp_path):
    from omegaconf import OmegaConf

    from maskdet.checkpoints import run_data_config
    from maskdet.cli import data_changes
    from maskdet.errors import ConfigError
    from maskdet.trust import shipped_targets

    (tmp_path / "run" / ".hydra").mkdir(parents=True)
    OmegaConf.save({"data": {"root": "/faces", "fold": 2, "subset": {}, "balance_by": "gender", "cache_dir": "/old"}},
                   tmp_path / "run" / ".hydra" / "config.yaml")
    command = OmegaConf.create({"root": "/other", "cache_dir": "/new"})
    changes = data_changes(["+data.subset.gender=female", "data.fold=1", "~data.balance_by", "data.size=[1, 2]",
                            "model.lr=0.1", "trainer.max_epochs=2"])
    data = run_data_config(tmp_path / "run" / "checkpoints" / "best.ckpt", changes, command, shipped_targets())
    assert OmegaConf.to_container(data) == {"root": "/faces", "fold": 1, "subset": {"gender": "female"},
                                            "balance_by": None, "cache_dir": "/new", "size": [1, 2]}
    assert run_data_config(tmp_path / "elsewhere" / "best.ckpt", changes, command, shipped_targets()) is command  # no run config
    assert data_changes(["data=folder", "data.root=/x"]) is None  # another source: the command's own data config
    OmegaConf.save({"data": {"_target_": "maskdet.data.MaskDataModule", "source": "folder", "root": "/faces"}},
                   tmp_path / "run" / ".hydra" / "config.yaml")  # as runs before data layouts were readers
    with pytest.raises(ConfigError, match=r"older maskdet .*data.source='folder'.*data=<layout> data.root=<folder>"):
        run_data_config(tmp_path / "run" / "checkpoints" / "best.ckpt", changes, command, shipped_targets())


def test_evaluate_refuses_missing_and_foreign_checkpoints(tmp_path):
    import torch

    from maskdet.checkpoints import load_classifier
    from maskdet.errors import ConfigError

    with pytest.raises(ConfigError, match="does not exist"):
        load_classifier(tmp_path / "nope.ckpt")
    torch.save({"state_dict": {}, "hyper_parameters": {"lr": 1}}, tmp_path / "other.ckpt")
    with pytest.raises(ConfigError, match="not a maskdet checkpoint"):
        load_classifier(tmp_path / "other.ckpt")
    (tmp_path / "text.ckpt").write_text("hello")
    with pytest.raises(ConfigError, match="not a readable PyTorch checkpoint"):
        load_classifier(tmp_path / "text.ckpt")


@pytest.mark.slow
def test_the_comp6721_bias_study_in_one_command(small_dataset, cache_dir, tmp_path):
    cfg = compose_train(["+experiment=bias_study", "data=folder", f"data.root={small_dataset}", "data.num_folds=3",
                         "trainer.max_epochs=2", "bias_study.cap_per_class=4", "~logger", "bias.n_bootstrap=50"],
                        tmp_path, cache_dir)
    train(cfg)
    study = pd.read_csv(tmp_path / "bias_study.csv")
    assert list(study["subset"]) == ["male", "female", "white", "black"]
    assert (study["n"] <= 16).all() and (study["n"] > 0).all()
    pairs = pd.read_csv(tmp_path / "bias_study_pairs.csv")
    assert list(pairs["comparison"]) == ["male - female", "white - black"]
    assert pairs["p_value"].between(0, 1).all()
    assert "p-value" in (tmp_path / "bias_study.md").read_text()
