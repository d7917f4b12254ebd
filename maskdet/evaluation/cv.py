"""Summaries of a multirun: folds grouped by configuration, mean ± sample std (ddof = 1), best configuration first.

A job folder holds ``.hydra/overrides.yaml`` and either ``metrics.json`` (finished) or ``failed.json``
(the error of a job that failed), so a summary never has a silent gap (``maskdet.runfolder`` says how a
run is told). Runs are pooled only when tested alike: a configuration whose runs were tested on different
data, or trained with different trainer settings (a job resumed with another ``trainer.max_epochs``, whose
overrides stay those of the sweep), is split into configurations of their own, named in the notes
(``keep_apart``). Names read from files (overrides, errors, demographic groups) are escaped where they land.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd
import yaml

from maskdet import runfolder
from maskdet.data.settings import FOLD_KEY, REPEAT_KEY
from maskdet.errors import DataError
from maskdet.writing import md, one_line, write_csv, write_text

METRICS = ["val/acc_best", "val/acc", "val/f1", "val/loss", "test/acc", "test/f1", "test/loss"]
IN_JOB_FOLD = re.compile(r"fold_(\d+)")
NOT_RECORDED = "not recorded (written by an older maskdet)"


def _overrides(job: Path) -> dict[str, str]:
    """The job's overrides as Hydra recorded them, key -> value text. Split by hand rather than with Hydra's
    parser (``maskdet.cli.parse_overrides``) because this module reads finished runs without Hydra; each
    item is one ``key=value`` that Hydra wrote (no sweep); ``~key`` deletions carry no value and are skipped.
    Text is folded onto one line: a crafted value must not become lines of a report."""
    path = job / runfolder.OVERRIDES
    if not path.is_file() and IN_JOB_FOLD.fullmatch(job.name):  # a cv_in_job fold: its job's overrides
        path = job.parent / runfolder.OVERRIDES
    try:
        items = yaml.safe_load(path.read_text()) if path.is_file() else []
    except yaml.YAMLError as err:
        raise DataError(f"{path} is not a list of Hydra overrides ({one_line(err)}): restore it from the "
                        "run's copy, or leave the run out of the comparison.") from None
    if not isinstance(items, list | type(None)):
        raise DataError(f"{path} is not a list of Hydra overrides: restore it, or leave the run out.")
    pairs = (one_line(item).lstrip("+~").split("=", 1) for item in items or [] if "=" in str(item))
    return {key: value for key, value in pairs}


def _configured_fold(job: Path) -> str | None:
    """The fold a run used when no override set it (the config default), from its saved config."""
    path = job / runfolder.CONFIG
    if not path.is_file():
        return None
    fold = ((yaml.safe_load(path.read_text()) or {}).get("data") or {}).get("fold")
    return None if fold is None else str(fold)


def _job_order(folder: Path) -> tuple:
    """Sweep jobs in launch order: folder names start with the job number (``12_lr=0.01,fold=2``)."""
    number = re.match(r"\d+", folder.name)
    return (int(number.group()) if number else float("inf"), folder.name)


def run_folders(paths, depth: int = 3) -> list[Path]:
    """The run folders in ``paths``: a run folder is itself, a cv_in_job run its ``fold_<k>`` folders,
    and any other folder (a sweep, ``outputs/train/runs``) the runs inside it, ``depth`` levels down."""
    found = []
    for path in map(Path, paths):
        folds = sorted((p for p in path.glob("fold_*") if IN_JOB_FOLD.fullmatch(p.name) and runfolder.is_run(p)), key=_job_order)
        if folds:
            found += folds
        elif runfolder.is_run(path):
            found.append(path)
        elif path.is_dir() and depth > 0:
            found += run_folders(sorted((p for p in path.iterdir() if p.is_dir()), key=_job_order), depth - 1)
    return found


def collect_runs(sweep_dir: str | Path) -> pd.DataFrame:
    """One row per job of the sweep: its configuration, fold, status, metrics, error and folder."""
    return collect_jobs(sorted((p for p in Path(sweep_dir).iterdir() if runfolder.is_run(p)), key=_job_order))


def tested_on(metrics: dict) -> dict:
    """A finished run's record of what it was tested on (``maskdet.evaluation.holdout.tested_on``), as the
    columns of its row: the test data in one line (fingerprint, images, classes), the number of test
    images, the class names and the trainer settings; None for what the run does not record (written by an
    older maskdet; the trainer of ``maskdet.evaluate``, which trained nothing)."""
    record = metrics.get("tested_on")
    if not isinstance(record, dict):
        return {"test_data": None, "test_images": None, "class_names": None, "trainer": None}
    classes = one_line(", ".join(map(str, record.get("class_names") or [])))
    images = record.get("test_images")
    trainer = record.get("trainer")
    return {"test_data": one_line(f"{str(record.get('fingerprint'))[:12]}: {images} test images, classes {classes}"),
            "test_images": images, "class_names": classes,
            "trainer": {str(k): trainer[k] for k in sorted(trainer)} if isinstance(trainer, dict) else None}


_STATE_ERRORS = {"resumable": "did not finish: no metrics.json and no failed.json, only a checkpoint (killed? resume "
                              "it with ckpt_path=<run>/checkpoints/last.ckpt)",
                 "empty": "no metrics.json and no failed.json: killed before its first checkpoint?"}


def collect_jobs(jobs) -> pd.DataFrame:
    """One row per run folder in ``jobs``: configuration (the overrides that differ between them, kept apart
    by ``keep_apart``), fold, status, metrics, what it was tested on, error and folder. ``repeat_of`` names
    the configuration without ``data.fold_seed``: the repeats of a repeated k-fold share it (each repeat
    stays a configuration of its own in summaries, whose folds are one partition); ``fold_seed`` says which
    partition (None when the sweep does not vary it)."""
    rows = []
    for job in map(Path, jobs):
        overrides = _overrides(job)
        fold = overrides.pop(FOLD_KEY, None)
        in_job_fold = IN_JOB_FOLD.fullmatch(job.name)  # folds run inside one job (cv_in_job)
        fold = in_job_fold.group(1) if fold is None and in_job_fold else fold
        fold = _configured_fold(job) if fold is None else fold
        row = {"job": one_line(job.name), "overrides": overrides,
               "fold": int(fold) if fold is not None and str(fold).isdigit() else fold, "run_dir": str(job)}
        state = runfolder.state(job)
        if state == "finished":
            metrics = json.loads((job / runfolder.METRICS).read_text())
            flat = {**metrics.get("val", {}), **metrics.get("test", {})}
            row.update(status="ok", error="", best_epoch=metrics.get("best_epoch"),
                       **{m: flat.get(m) for m in METRICS}, **tested_on(metrics),
                       **{f"bias/{one_line(k)}": v for k, v in (metrics.get("bias") or {}).items()})
        else:
            failure = json.loads((job / runfolder.FAILED).read_text()) if state == "failed" else {}
            row.update(status="failed", error=one_line(failure.get("error", _STATE_ERRORS.get(state, state))),
                       best_epoch=None, **{m: None for m in METRICS}, **tested_on({}))
        rows.append(row)
    # a configuration is named by the overrides that differ between jobs; the shared ones are common
    keys = {k for row in rows for k in row["overrides"]}
    varying = sorted(k for k in keys if len({row["overrides"].get(k) for row in rows}) > 1)
    for row in rows:
        overrides = row.pop("overrides")
        row["config"] = _named(overrides, varying)
        row["repeat_of"] = _named(overrides, [k for k in varying if k != REPEAT_KEY])
        row["fold_seed"] = overrides.get(REPEAT_KEY) if REPEAT_KEY in varying else None  # which partition
    bias = sorted({k for row in rows for k in row if k.startswith("bias/")})
    return pd.DataFrame(rows, columns=["job", "config", "fold", "status", "error", "best_epoch", *METRICS, *bias,
                                       "test_data", "test_images", "class_names", "trainer", "repeat_of", "fold_seed", "run_dir"])


def _named(overrides: dict[str, str], keys) -> str:
    """A configuration's name: its values of the keys the sweep varies."""
    return " ".join(f"{k}={overrides.get(k)}" for k in keys) or "(one configuration)"


def _trainer_text(settings: dict | None, keys) -> str:
    if settings is None:
        return "trainer settings not recorded"
    return " ".join(f"trainer.{k}={settings.get(k)}" for k in keys)


def _runs_text(folders, shown: int = 4) -> str:
    folders = [one_line(f) for f in folders]
    return ", ".join(folders[:shown]) + (f" and {len(folders) - shown} more" if len(folders) > shown else "")


def per_fold_test(runs: pd.DataFrame) -> bool:
    """Whether the finished runs form the per-fold test design: two or more folds, each run by two or more
    runs, every fold's runs tested on one recorded test set, and every fold on a different one (each fold tested on its own held-out images,
    the same for every configuration of the fold). maskdet's training does not produce it today (the test
    split is one holdout); runs re-tested per fold do."""
    finished = runs[runs["status"] == "ok"]
    if len(finished) < 2 or finished["test_data"].isna().any():
        return False
    folds = finished.groupby(finished["fold"].astype(str), sort=False)
    per_fold, runs_per_fold = folds["test_data"].nunique(), folds.size()
    # two or more runs (configurations) on every fold: one configuration whose folds were tested on different
    # data cannot be told from a mistake, so it is kept apart (keep_apart) or refused (maskdet.compare)
    return len(per_fold) >= 2 and (per_fold == 1).all() and (runs_per_fold >= 2).all() and \
        finished.drop_duplicates("fold")["test_data"].nunique() == len(per_fold)


def _set_apart(runs: pd.DataFrame, i, why: str) -> None:
    """Rename run ``i``'s configuration ``<config> [<why>]``; its ``repeat_of`` gains the same suffix, so runs
    kept apart are never taken for repeats of one configuration."""
    for column in ("config", "repeat_of"):
        if column in runs:
            runs.at[i, column] = f"{runs.at[i, column]} [{why}]"


def keep_apart(runs: pd.DataFrame) -> list[str]:
    """Split (in place) each configuration whose finished runs were trained with different trainer settings
    or tested on different data into configurations of their own, and return a note naming each split:
    pooling them would average figures of different experiments under one name."""
    notes = []
    finished = runs["status"] == "ok"
    for config in list(runs.loc[finished, "config"].unique()):
        members = runs.index[finished & (runs["config"] == config)]
        trainers = [runs.at[i, "trainer"] for i in members]
        kinds = {json.dumps(t, sort_keys=True, default=str) for t in trainers}
        if len(kinds) > 1:
            known = [t for t in trainers if t is not None]
            keys = sorted(k for k in {k for t in known for k in t}
                          if len({json.dumps(t.get(k), default=str) for t in known}) > 1)
            for i, settings in zip(members, trainers):
                _set_apart(runs, i, _trainer_text(settings, keys))
            split = runs.loc[members].groupby("config", sort=False)["run_dir"]
            notes.append(f"{config}: its runs were trained with different trainer settings (a job resumed with "
                         "other settings?), so they are not pooled: " +
                         "; ".join(f"{name} ({_runs_text(folders)})" for name, folders in split))
    by_fold = per_fold_test(runs)  # each fold tested on its own images: by design, not kept apart
    for config in list(runs.loc[finished, "config"].unique()) if not by_fold else []:
        members = runs.index[finished & (runs["config"] == config)]
        if runs.loc[members, "test_data"].fillna(NOT_RECORDED).nunique() > 1:
            for i in members:
                _set_apart(runs, i, f"test data {runs.at[i, 'test_data'] or NOT_RECORDED}")
            split = runs.loc[members].groupby("config", sort=False)["run_dir"]
            notes.append(f"{config}: its runs were tested on different data, so they are not pooled: " +
                         "; ".join(f"{name} ({_runs_text(folders)})" for name, folders in split))
    tested = runs.loc[finished].groupby(runs.loc[finished, "test_data"].fillna(NOT_RECORDED), sort=False)["config"]
    if len(tested) > 1 and not by_fold:
        notes.append(f"the configurations were tested on {len(tested)} different test sets, so their test metrics "
                     "do not compare (maskdet.compare refuses them): " +
                     "; ".join(f"{data}: {', '.join(configs.unique())}" for data, configs in tested))
    return notes


def metric_columns(runs: pd.DataFrame) -> list[str]:
    return METRICS + [c for c in runs.columns if c.startswith("bias/")]


def common_overrides(sweep_dir: str | Path) -> list[str]:
    """The overrides every job of the sweep shares (shown once, above the table)."""
    jobs = [_overrides(j) for j in Path(sweep_dir).iterdir() if (j / ".hydra").is_dir()]
    if not jobs:
        return []
    shared = {k: v for k, v in jobs[0].items() if k != FOLD_KEY and all(j.get(k) == v for j in jobs)}
    return [f"{k}={v}" for k, v in sorted(shared.items())]


def summarise(runs: pd.DataFrame, rank_by: str = "val/acc_best") -> pd.DataFrame:
    """Mean, sample std (ddof = 1; nan for one fold) and count of every metric per configuration over its
    finished folds, best ``rank_by`` first."""
    columns = metric_columns(runs)
    finished = runs[runs["status"] == "ok"].astype({c: float for c in columns})
    grouped = finished.groupby("config")[columns].agg(["mean", "std", "count"])  # std: sample (ddof = 1)
    grouped.columns = [f"{metric} {stat}" for metric, stat in grouped.columns]
    counts = runs.groupby("config").agg(folds=("status", lambda s: int((s == "ok").sum())),
                                        failed=("status", lambda s: int((s == "failed").sum())))
    table = counts.join(grouped, how="left").reset_index()
    return table.sort_values(f"{rank_by} mean", ascending=False, na_position="last").reset_index(drop=True)


def _pm(mean: float, std: float, n: float | None = None, folds: int | None = None) -> str:
    """mean ± sample std; one value: no std (it is undefined); n shown where fewer folds than the row's."""
    if pd.isna(mean):
        return "-"
    text = f"{mean:.4f} (one fold: no std)" if pd.isna(std) else f"{mean:.4f} ± {std:.4f}"
    return text + (f" (n = {int(n)})" if n is not None and folds is not None and 1 < n < folds else "")


def format_markdown(runs: pd.DataFrame, summary: pd.DataFrame, common: list[str] = (), notes: list[str] = ()) -> str:
    """The summary as markdown; every name read from a file passes through ``writing.md``."""
    shown = ["val/acc_best", "val/f1", "val/loss", "test/acc", "test/f1", "test/loss"]
    lines = ["# Cross-validation summary", "", f"Common overrides: {md(' '.join(common)) or '(none)'}", "",
             "**Conventions.** mean ± std over a configuration's finished folds; std is the sample std (ddof = 1), "
             "and a configuration with one fold shows none (undefined); n = folds, or the n given in a cell. No "
             "intervals here: the test metrics are on one shared holdout, so the folds' spread is training "
             "variability given this test split and ignores test-set sampling; comparison.md gives intervals and "
             "tests that account for both (and ECE: top-label, 15 equal-width confidence bins). val/acc_best is "
             "a maximum over epochs (biased upwards).", "",
             "## Configurations (mean ± sample std over folds, n = folds; best val/acc_best first)", "",
             "| configuration | folds | failed | " + " | ".join(shown) + " |",
             "|---" * (3 + len(shown)) + "|"]
    for _, row in summary.iterrows():
        cells = [_pm(row[f"{m} mean"], row[f"{m} std"], row[f"{m} count"], row["folds"]) for m in shown]
        lines.append(f"| {md(row['config'])} | {row['folds']} | {row['failed']} | " + " | ".join(cells) + " |")
    bias = [c for c in summary.columns if c.startswith("bias/") and c.endswith(" mean") and "p_value" not in c]
    if bias:
        lines += ["", "## Group accuracy and each attribute's gap (test split, mean ± sample std over folds)", "",
                  "A group's accuracy, and per attribute its gap (best minus worst ranked group in the audit's primary "
                  "metric, bias_report.json): the same attribute in every run. n = the configuration's folds, or "
                  "the n given in a cell (a group or gap some runs lack).", "",
                  "| attribute/group | " + " | ".join(map(md, summary["config"])) + " |",
                  "|---" * (1 + len(summary)) + "|"]
        for column in bias:
            cells = [_pm(row[column], row[column.replace(" mean", " std")], row[column.replace(" mean", " count")],
                         row["folds"]) for _, row in summary.iterrows()]
            lines.append(f"| {md(column.removeprefix('bias/').removesuffix(' mean'))} | " + " | ".join(cells) + " |")
    lines += ["", "## Runs", "", "| configuration | fold | status | best epoch | val acc | val F1 | val loss | "
              "test acc | test F1 | test loss | run folder |", "|---" * 11 + "|"]
    for _, r in runs.iterrows():
        values = " | ".join("-" if pd.isna(r[m]) else f"{r[m]:.4f}" for m in ["val/acc", "val/f1", "val/loss",
                                                                           "test/acc", "test/f1", "test/loss"])
        epoch = "-" if pd.isna(r["best_epoch"]) else int(r["best_epoch"])
        lines.append(f"| {md(r['config'])} | {md(r['fold'])} | {r['status']} | {epoch} | {values} | {md(r['run_dir'])} |")
    failed = runs[runs["status"] == "failed"]
    if len(failed):
        lines += ["", "## Failed jobs", ""] + [f"- job {md(r['job'])} ({md(r['config'])}, fold {md(r['fold'])}): "
                                               f"{md(r['error'])}" for _, r in failed.iterrows()]
    if notes:
        lines += ["", "## Notes", ""] + [f"- {md(note)}" for note in notes]
    return "\n".join(lines) + "\n"


def _settings_text(settings) -> str:
    return "; ".join(f"{k}={v}" for k, v in settings.items()) if isinstance(settings, dict) else ""


def write_summary(sweep_dir: str | Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Write ``cv_summary.csv`` (every run, then mean and std rows per configuration) and ``cv_summary.md``."""
    sweep_dir = Path(sweep_dir)
    runs = collect_runs(sweep_dir)
    notes = keep_apart(runs)
    summary = summarise(runs)
    stats = []
    for _, row in summary.iterrows():
        for stat in ("mean", "std"):
            stats.append({"config": row["config"], "fold": stat, "status": f"{row['folds']} ok, {row['failed']} failed",
                          **{m: row[f"{m} {stat}"] for m in metric_columns(runs)}})
    table = pd.concat([runs.assign(trainer=runs["trainer"].map(_settings_text)), pd.DataFrame(stats)], ignore_index=True)
    write_csv(table, sweep_dir / "cv_summary.csv")
    write_text(sweep_dir / "cv_summary.md", format_markdown(runs, summary, common_overrides(sweep_dir), notes))
    return runs, summary


def _short(mean: float, std: float) -> str:
    """mean ± sample std in a console line; the mean alone for one fold (the line gives the folds)."""
    return "-" if pd.isna(mean) else f"{mean:.4f}" if pd.isna(std) else f"{mean:.4f} ± {std:.4f}"


def console_summary(runs: pd.DataFrame, summary: pd.DataFrame, sweep_dir: str | Path, shown: int = 3,
                    rank_by: str = "val/acc_best") -> str:
    """A sweep's last words on the console, a few lines: its jobs, its best configurations ranked (mean ±
    sample std over folds) and where the full summary and the comparison are."""
    sweep_dir = Path(sweep_dir)
    failed = int((runs["status"] == "failed").sum())
    lines = [f"sweep: {len(runs)} jobs ({len(runs) - failed} finished, {failed} failed), {len(summary)} "
             f"configuration{'s' * (len(summary) != 1)}; best first by mean {rank_by} over folds:"]
    for rank, row in summary.head(shown).iterrows():
        name = one_line(row["config"])
        name = name if len(name) <= 100 else name[:99] + "…"
        if not row["folds"]:
            lines.append(f"  {rank + 1}. {name}: no finished fold ({row['failed']} failed)")
            continue
        figures = ", ".join(f"{label} {_short(row[f'{m} mean'], row[f'{m} std'])}" for m, label in
                            ((rank_by, rank_by), ("test/acc", "test acc"), ("test/f1", "macro-F1")))
        folds = f"{row['folds']} fold{'s' * (row['folds'] != 1)}" + (f", {row['failed']} failed" if row["failed"] else "")
        lines.append(f"  {rank + 1}. {name}: {figures} ({folds})")
    if len(summary) > shown:
        lines.append(f"  ... and {len(summary) - shown} more configurations")
    lines.append(f"full summary: {sweep_dir / 'cv_summary.md'} (every run, group and gap; also .csv)")
    if (sweep_dir / "comparison.md").is_file():
        lines.append(f"comparison of configurations (intervals, tests): {sweep_dir / 'comparison.md'}")
    return "\n".join(lines)


def train_folds(cfg, train) -> dict:
    """All folds inside one job (``cv_in_job``: caches reused), for a search whose objective is
    cross-validated: ``train(fold_cfg)`` runs each fold in ``fold_<k>/``; the folds' summary is written and
    the mean validation and test metrics are returned (and written as the job's own ``metrics.json``)."""
    from omegaconf import OmegaConf

    from maskdet.evaluation.reports import write_metrics

    output_dir = Path(cfg.paths.output_dir)
    for fold in range(cfg.data.num_folds):
        fold_cfg = cfg.copy()
        OmegaConf.update(fold_cfg, FOLD_KEY, fold)
        OmegaConf.update(fold_cfg, "paths.output_dir", str(output_dir / f"fold_{fold}"))
        train(fold_cfg)
    runs, summary = write_summary(output_dir)
    row = summary.iloc[0]
    metrics = {stage: {m: float(row[f"{m} mean"]) for m in METRICS if m.startswith(stage)} for stage in ("val", "test")}
    metrics.update(folds=int(row["folds"]), failed=int(row["failed"]), cv_in_job=True)
    write_metrics(metrics, output_dir)  # the job's own metrics: means over its folds
    return metrics
