"""Multiruns: k-fold experiments, mixed sweeps grouped by configuration, failures in the summary."""

import json
import re
import subprocess
import sys

import pandas as pd
import pytest
import yaml

from maskdet.evaluation.cv import collect_runs, summarise, write_summary
from tests.conftest import REPO, cli_env
from tests.helpers import commands
from tests.helpers.data import settings


def _job(sweep, num, overrides, metrics=None, error=None):
    job = sweep / str(num)
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    if metrics is not None:
        (job / "metrics.json").write_text(json.dumps({
            "val": {"val/acc_best": metrics, "val/acc": metrics, "val/f1": metrics, "val/loss": 1 - metrics},
            "test": {"test/acc": metrics - 0.01, "test/f1": metrics - 0.02, "test/loss": 1.1 - metrics},
            "best_checkpoint": "/x/checkpoints/best.ckpt", "best_epoch": num}))
    if error is not None:
        (job / "failed.json").write_text(json.dumps({"error": error}))


def test_summary_groups_by_non_fold_overrides_best_first(tmp_path):
    accs = {("1e-3", 0): 0.8, ("1e-3", 1): 0.9, ("1e-4", 0): 0.6, ("1e-4", 1): 0.7}
    for num, ((lr, fold), acc) in enumerate(accs.items()):
        _job(tmp_path, num, [f"model.optimizer.lr={lr}", f"data.fold={fold}"], acc)
    _job(tmp_path, 4, ["model.optimizer.lr=1e-2", "data.fold=0"], error="RuntimeError: loss is nan")
    runs, summary = write_summary(tmp_path)
    assert list(summary["config"]) == ["model.optimizer.lr=1e-3", "model.optimizer.lr=1e-4", "model.optimizer.lr=1e-2"]
    assert summary.loc[0, "val/acc_best mean"] == pytest.approx(0.85)
    assert summary.loc[0, "val/acc_best std"] == pytest.approx(pd.Series([0.8, 0.9]).std())
    assert summary.loc[2, "failed"] == 1 and summary.loc[2, "folds"] == 0
    assert runs.loc[runs["job"] == "1", "best_epoch"].item() == 1
    markdown = (tmp_path / "cv_summary.md").read_text()
    assert "| model.optimizer.lr=1e-3 | 2 | 0 | 0.8500 ± 0.0707" in markdown
    assert "job 4 (model.optimizer.lr=1e-2, fold 0): RuntimeError: loss is nan" in markdown
    table = pd.read_csv(tmp_path / "cv_summary.csv")
    assert set(table["fold"].astype(str)) >= {"0", "1", "mean", "std"}


def test_killed_job_without_metrics_is_reported_not_skipped(tmp_path):
    _job(tmp_path, 0, ["data.fold=0"], 0.9)
    _job(tmp_path, 1, ["data.fold=1"])
    runs = collect_runs(tmp_path)
    assert list(runs["status"]) == ["ok", "failed"] and "killed" in runs.loc[1, "error"]
    assert summarise(runs).loc[0, "failed"] == 1


def _multirun(tmp_path, cache_dir, *overrides):
    result = commands.run([sys.executable, "-m", "maskdet.train", "-m", *overrides], cwd=REPO,
                            env=cli_env(cache_dir, tmp_path), capture_output=True, text=True, timeout=600)
    sweeps = list((tmp_path / "outputs").glob("*/multiruns/*"))
    return result, sweeps


@pytest.mark.slow
def test_kfold_experiment_runs_every_fold_and_summarises(tiny_dataset, cache_dir, tmp_path):
    result, (sweep,) = _multirun(tmp_path, cache_dir, "+experiment=custom_cnn_kfold", "data.num_folds=3",
                                 "data=folder", f"data.root={tiny_dataset}", "trainer.max_epochs=1", "~logger")
    assert result.returncode == 0, result.stderr[-3000:]
    runs = pd.read_csv(sweep / "cv_summary.csv")
    folds = runs[runs["fold"].isin(["0", "1", "2"])]
    assert sorted(folds["fold"]) == ["0", "1", "2"] and (folds["status"] == "ok").all()
    mean = runs.loc[runs["fold"] == "mean", "test/acc"].item()
    assert mean == pytest.approx(folds["test/acc"].astype(float).mean())
    # every fold tested on the same test split, validated on its own fold
    reports = [json.loads((sweep / f"{j}_fold-{j}" / "data_report.json").read_text()) for j in range(3)]
    assert len({r["counts"]["split"]["test"] for r in reports}) == 1
    assert "± " in (sweep / "cv_summary.md").read_text()
    assert list((sweep / "tensorboard").glob("events.out.tfevents.*"))
    # a job's checkpoint path pastes into a command line as it is: no quotes for the shell or for Hydra
    ckpt = sweep / "1_fold-1" / "checkpoints" / "best.ckpt"
    evaluated = subprocess.run(f"{sys.executable} -m maskdet.evaluate ckpt_path={ckpt} bias.n_bootstrap=10",
                               shell=True, cwd=REPO, env=cli_env(cache_dir, tmp_path), capture_output=True, text=True,
                               timeout=600)
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    assert list((tmp_path / "outputs" / "evaluate" / "runs").glob("*/metrics.json"))


@pytest.mark.slow
def test_mixed_sweep_with_a_failing_job_summarises_the_rest(tiny_dataset, cache_dir, tmp_path):
    result, (sweep,) = _multirun(tmp_path, cache_dir, "data=folder", f"data.root={tiny_dataset}",
                                 "data.num_folds=3", "trainer.max_epochs=1", "callbacks.explanations=null",
                                 "model.optimizer.lr=1e-3,-1.0", "data.fold=0,1")
    assert result.returncode == 1  # a job failed: said at the end, after the summary was written
    assert "2 of 4 sweep jobs failed" in result.stderr
    # the console ends with the best configurations in a few lines and where the full summary is
    ending = result.stdout[result.stdout.rindex("sweep: 4 jobs"):].strip().splitlines()
    assert len(ending) <= 6, ending
    assert ending[0].startswith("sweep: 4 jobs (2 finished, 2 failed), 2 configurations")
    assert ending[1].startswith("  1. model.optimizer.lr=0.001: val/acc_best ") and "(2 folds)" in ending[1]
    assert ending[2] == "  2. model.optimizer.lr=-1.0: no finished fold (2 failed)"
    assert f"full summary: {sweep / 'cv_summary.md'}" in ending[3]
    assert "# Cross-validation summary" not in result.stdout and "| attribute/group" not in result.stdout
    _check_sweep_tensorboard(sweep)
    summary = (sweep / "cv_summary.md").read_text()
    assert "| data.fold" not in summary  # folds are grouped, not configurations
    runs = pd.read_csv(sweep / "cv_summary.csv")
    good = runs[(runs["config"] == "model.optimizer.lr=0.001") & runs["fold"].isin(["0", "1"])]
    bad = runs[(runs["config"] == "model.optimizer.lr=-1.0") & runs["fold"].isin(["0", "1"])]
    assert (good["status"] == "ok").all() and len(good) == 2
    assert (bad["status"] == "failed").all()
    assert bad["error"].str.contains("model.optimizer.lr=-1.0 is not accepted: it must be a finite number above 0").all()


def _check_sweep_tensorboard(sweep):
    """The sweep's HParams config declares the settings that differ across its runs first (then the main
    metrics), and its failed jobs are sessions with status failure, as TensorBoard's own backend serves them."""
    from tensorboard.plugins.hparams import api_pb2

    from maskdet.loggers import MAIN_METRICS, tb_tag
    from tests.test_loggers import _events, _hparams, served_by_tensorboard

    experiment = _hparams(_events(sweep / "tensorboard"))["experiment"]
    leading = [h.name for h in experiment.hparam_infos if h.differs]
    assert leading[:2] == ["data.fold", "model.optimizer.lr"]  # what differs across the runs, first
    assert "model.architecture" in leading and len(leading) == 5  # topped up to the five TensorBoard shows
    assert [m.name.tag for m in experiment.metric_infos][:3] == [tb_tag(m) for m in MAIN_METRICS[:3]]
    for job in ("2_lr--1.0+fold-0", "3_lr--1.0+fold-1"):  # refused before training: marked at the sweep's end
        assert _hparams(_events(sweep / job / "tensorboard"))["end"].status == api_pb2.STATUS_FAILURE
    served, groups = served_by_tensorboard(sweep)
    assert [h["name"] for h in served["hparamInfos"][:5]] == sorted(leading)
    statuses = {g["name"].split("/")[0]: g["sessions"][0]["status"] for g in groups}
    assert statuses == {"0_lr-0.001+fold-0": "STATUS_SUCCESS", "1_lr-0.001+fold-1": "STATUS_SUCCESS",
                        "2_lr--1.0+fold-0": "STATUS_FAILURE", "3_lr--1.0+fold-1": "STATUS_FAILURE"}
    for group in groups:  # each run's final figures reach its row, read from the tags the config names
        if group["sessions"][0]["status"] == "STATUS_SUCCESS":
            assert tb_tag("final/test/acc") in {m["name"]["tag"] for m in group["metricValues"]}


def test_console_summary_ranks_a_few_configurations_and_names_the_full_summary(tmp_path):
    from maskdet.evaluation.cv import console_summary

    for num, (lr, acc) in enumerate([("1e-1", 0.5), ("1e-2", 0.9), ("1e-3", 0.7), ("1e-4", 0.6), ("1e-5", 0.4)]):
        for fold in (0, 1):
            _job(tmp_path, 2 * num + fold, [f"model.optimizer.lr={lr}", f"data.fold={fold}"], acc + fold / 100)
    runs, summary = write_summary(tmp_path)
    lines = console_summary(runs, summary, tmp_path).splitlines()
    assert lines[0] == "sweep: 10 jobs (10 finished, 0 failed), 5 configurations; best first by mean val/acc_best over folds:"
    assert [line.split(":")[0] for line in lines[1:4]] == ["  1. model.optimizer.lr=1e-2", "  2. model.optimizer.lr=1e-3",
                                                           "  3. model.optimizer.lr=1e-4"]
    assert "val/acc_best 0.9050 ± 0.0071" in lines[1] and "(2 folds)" in lines[1]
    assert lines[4] == "  ... and 2 more configurations"
    assert lines[5].startswith(f"full summary: {tmp_path / 'cv_summary.md'}") and len(lines) == 6


def test_two_seeded_deterministic_runs_give_identical_metrics(tiny_dataset, cache_dir, tmp_path):
    from maskdet.train import train
    from tests.conftest import compose_train

    overrides = ["data=folder", f"data.root={tiny_dataset}", "data.num_folds=3", "trainer.max_epochs=2",
                 "trainer.deterministic=true", "seed=3", "~logger",
                 "+data.augment={_target_: maskdet.data.augment.BatchAugment}"]
    first = train(compose_train(overrides, tmp_path / "a", cache_dir))
    second = train(compose_train(overrides, tmp_path / "b", cache_dir))
    assert first["val"] == second["val"] and first["test"] == second["test"]
    third = train(compose_train([*overrides[:-2], "seed=4", overrides[-1]], tmp_path / "c", cache_dir))
    assert third["test"] != first["test"] or third["val"] != first["val"]


@pytest.mark.slow
def test_ddp_with_two_cpu_processes_matches_single_process_evaluation(tiny_dataset, cache_dir, tmp_path):
    result = subprocess.run([sys.executable, "-m", "maskdet.train", "trainer=ddp_sim", "data=folder",
                             f"data.root={tiny_dataset}", "data.num_folds=3", "trainer.max_epochs=2", "task_name=ddp",
                             "data.eval_batch_size=8"],
                            cwd=REPO, env=cli_env(cache_dir, tmp_path), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    (run,) = (tmp_path / "outputs" / "ddp" / "runs").iterdir()
    metrics = json.loads((run / "metrics.json").read_text())
    predictions = pd.read_csv(run / "predictions.csv")
    assert len(predictions) == 36 and predictions["path"].is_unique  # both ranks' halves, once each

    import lightning as L

    from maskdet.data import MaskDataModule
    from maskdet.models import MaskClassifier

    model = MaskClassifier.load_from_checkpoint(metrics["best_checkpoint"], weights=None)
    dm = MaskDataModule(settings(tiny_dataset, cache_dir))
    single = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False).test(model, dm, verbose=False)[0]
    assert single["test/acc"] == pytest.approx(metrics["test"]["test/acc"], abs=1e-6)
    assert single["test/f1"] == pytest.approx(metrics["test"]["test/f1"], abs=1e-6)
    accuracy = (predictions["label"] == predictions["prediction"]).mean()
    assert accuracy == pytest.approx(single["test/acc"], abs=1e-6)


@pytest.mark.slow
def test_optuna_search_optimises_a_cross_validated_score(tiny_dataset, cache_dir, tmp_path):
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    result, (sweep,) = _multirun(tmp_path, cache_dir, "hparams_search=optuna", "hydra.sweeper.n_trials=2",
                                 "hydra.sweeper.sampler.n_startup_trials=2", "data=folder", f"data.root={tiny_dataset}",
                                 "data.num_folds=2", "trainer.max_epochs=1", "~logger")
    assert result.returncode == 0, result.stderr[-3000:]
    best = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert set(best["best_params"]) == {"model.optimizer.lr", "data.batch_size"}  # no freezing for the custom CNN
    trial_dirs = sorted(p for p in sweep.iterdir() if (p / "metrics.json").is_file())  # 0_lr-...+batch_size-...
    assert [p.name.split("_")[0] for p in trial_dirs] == ["0", "1"] and "lr-" in trial_dirs[0].name
    for trial in trial_dirs:
        folds = pd.read_csv(trial / "cv_summary.csv")
        per_fold = folds[folds["fold"].isin(["0", "1"])]
        assert len(per_fold) == 2 and (per_fold["status"] == "ok").all()
        job = json.loads((trial / "metrics.json").read_text())
        assert job["val"]["val/acc_best"] == pytest.approx(per_fold["val/acc_best"].astype(float).mean())
    trials = [json.loads((t / "metrics.json").read_text())["val"]["val/acc_best"] for t in trial_dirs]
    assert best["best_value"] == pytest.approx(max(trials))


@pytest.mark.slow
def test_joblib_launcher_runs_folds_in_parallel_on_one_shared_cache(cache_dir, tmp_path):
    pytest.importorskip("hydra_plugins.hydra_joblib_launcher")
    fresh_cache = tmp_path / "cache"  # nothing built yet: the parallel jobs race to build it
    result, (sweep,) = _multirun(tmp_path, fresh_cache, "hydra/launcher=joblib", "hydra.launcher.n_jobs=2",
                                 "data.source.per_class=20", "data.source.size=48", "data.num_folds=2",
                                 "data.fold=0,1", "trainer.max_epochs=1", "~logger")
    assert result.returncode == 0, result.stderr[-3000:]
    runs = pd.read_csv(sweep / "cv_summary.csv")
    assert (runs.loc[runs["fold"].isin(["0", "1"]), "status"] == "ok").all()
    assert len([p for p in (fresh_cache / "synthetic").iterdir() if p.is_dir()]) == 1
    assert len([p for p in (fresh_cache / "decoded").iterdir() if p.is_dir()]) == 1


def test_slurm_launcher_and_ddp_compose():
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    from hydra import compose, initialize_config_dir

    from tests.conftest import CONF

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="train", return_hydra_config=True, overrides=[
            "hydra/launcher=submitit_slurm", "hydra.launcher.partition=gpu", "hydra.launcher.gpus_per_node=4",
            "hydra.launcher.tasks_per_node=4", "trainer=ddp", "trainer.devices=4", "trainer.num_nodes=2",
            "+experiment=resnet18_frozen_kfold"])
    assert cfg.hydra.launcher._target_.endswith("SlurmLauncher") and cfg.hydra.launcher.gpus_per_node == 4
    assert (cfg.trainer.strategy, cfg.trainer.devices, cfg.trainer.num_nodes) == ("ddp", 4, 2)
    assert cfg.trainer.use_distributed_sampler is False and cfg.trainer.precision == "bf16-mixed"


def test_each_search_space_offers_only_what_its_models_have():
    from hydra import compose, initialize_config_dir

    from tests.conftest import CONF

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        plain = compose(config_name="train", return_hydra_config=True, overrides=["hparams_search=optuna"])
        transfer = compose(config_name="train", return_hydra_config=True,
                           overrides=["hparams_search=optuna_transfer", "+experiment=resnet18_frozen"])
    assert set(plain.hydra.sweeper.params) == {"model.optimizer.lr", "data.batch_size"}
    assert set(transfer.hydra.sweeper.params) == {"model.optimizer.lr", "data.batch_size", "model.freeze"}


# Override values anyone could write: lists, floats, negative numbers, spaces, slashes, quotes, newlines,
# interpolations, and Hydra's own separators.
HOSTILE_VALUES = ["1e-3", "-1.0", "[]", "[gender,race]", "'a b/c'", "'x\ny'", "/abs/path", "..", "'${oc.env:HOME}'",
                  "{a: 1}", "'k=v,w'", "'1:2'", "'(x)'", "+3", "'~x'", "'$HOME'", "'*?|'", "inf", "null", "'é'"]


@pytest.mark.parametrize("value", HOSTILE_VALUES)
def test_job_folder_names_paste_unquoted(value):
    """A job folder's name uses letters, digits and . _ - + only: a path into it parses back whole with
    Hydra's override parser (and needs no shell quoting); never a '/' or a newline."""
    from maskdet.cli import parse_overrides
    from maskdet.hydra_callbacks import job_name

    override = f"data.root={value}"
    name = job_name(7, [override, "data.fold=2"], None, ["-m", f"data.root={value},other", "data.fold=0,1,2"])
    assert name.startswith("7_root-") and name.endswith("+fold-2"), name
    assert re.fullmatch(r"[A-Za-z0-9._+-]+", name), name
    path = f"outputs/train/multiruns/2024-01-01_00-00-00_abcdef/{name}/checkpoints/best.ckpt"
    (parsed,) = parse_overrides([f"ckpt_path={path}"])
    assert parsed.value() == path


def test_job_folder_names_say_what_varies():
    from maskdet.hydra_callbacks import job_name

    argv = ["-m", "data.fold=0,1,2", "model.optimizer.lr=0.001,0.01", "data.image_size=32"]
    assert job_name(3, ["data.fold=2", "model.optimizer.lr=0.01", "data.image_size=32"], None, argv) == "3_lr-0.01+fold-2"
    assert job_name(0, ["data.balance_by=[]"], None, ["-m", "data.balance_by=[],[gender]"]) == "0_balance_by-empty"
    assert job_name(1, ["data.group_by=source_photo"], None, ["-m", "data.group_by=null,source_photo"]) \
        == "1_group_by-source_photo"
    assert job_name(5, ["hydra/launcher=joblib"], None, []) == "5_hydra_launcher-joblib"
    assert job_name(5, [], None, []) == "5"
