"""Summaries of a multirun: folds grouped by configuration, mean ± std, best configuration first.

A job folder holds ``.hydra/overrides.yaml`` and either ``metrics.json`` (finished) or ``failed.json``
(the error of a job that failed), so a summary never has a silent gap.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd
import yaml

METRICS = ["val/acc_best", "val/acc", "val/f1", "val/loss", "test/acc", "test/f1", "test/loss"]
FOLD_KEY = "data.fold"
IN_JOB_FOLD = re.compile(r"fold_(\d+)")


def _overrides(job: Path) -> dict[str, str]:
    """The job's overrides as Hydra recorded them, key -> value text. Split by hand rather than with Hydra's
    parser (``maskdet.cli.parse_overrides``) because this module reads finished runs without Hydra; each
    item is one ``key=value`` that Hydra wrote (no sweep); ``~key`` deletions carry no value and are skipped."""
    path = job / ".hydra" / "overrides.yaml"
    if not path.is_file() and IN_JOB_FOLD.fullmatch(job.name):  # a cv_in_job fold: its job's overrides
        path = job.parent / ".hydra" / "overrides.yaml"
    items = yaml.safe_load(path.read_text()) if path.is_file() else []
    return dict(item.lstrip("+~").split("=", 1) for item in items or [] if "=" in item)


def _configured_fold(job: Path) -> str | None:
    """The fold a run used when no override set it (the config default), from its saved config."""
    path = job / ".hydra" / "config.yaml"
    if not path.is_file():
        return None
    fold = ((yaml.safe_load(path.read_text()) or {}).get("data") or {}).get("fold")
    return None if fold is None else str(fold)


def is_run(folder: Path) -> bool:
    return any((folder / name).exists() for name in (".hydra", "metrics.json", "failed.json"))


def _job_order(folder: Path) -> tuple:
    """Sweep jobs in launch order: folder names start with the job number (``12_lr=0.01,fold=2``)."""
    number = re.match(r"\d+", folder.name)
    return (int(number.group()) if number else float("inf"), folder.name)


def run_folders(paths, depth: int = 3) -> list[Path]:
    """The run folders in ``paths``: a run folder is itself, a cv_in_job run its ``fold_<k>`` folders,
    and any other folder (a sweep, ``outputs/train/runs``) the runs inside it, ``depth`` levels down."""
    found = []
    for path in map(Path, paths):
        folds = sorted((p for p in path.glob("fold_*") if IN_JOB_FOLD.fullmatch(p.name) and is_run(p)), key=_job_order)
        if folds:
            found += folds
        elif is_run(path):
            found.append(path)
        elif path.is_dir() and depth > 0:
            found += run_folders(sorted((p for p in path.iterdir() if p.is_dir()), key=_job_order), depth - 1)
    return found


def collect_runs(sweep_dir: str | Path) -> pd.DataFrame:
    """One row per job of the sweep: its configuration, fold, status, metrics, error and folder."""
    return collect_jobs(sorted((p for p in Path(sweep_dir).iterdir() if is_run(p)), key=_job_order))


def collect_jobs(jobs) -> pd.DataFrame:
    """One row per run folder in ``jobs``: configuration (the overrides that differ between them), fold,
    status, metrics, error and folder."""
    rows = []
    for job in map(Path, jobs):
        overrides = _overrides(job)
        fold = overrides.pop(FOLD_KEY, None)
        in_job_fold = IN_JOB_FOLD.fullmatch(job.name)  # folds run inside one job (cv_in_job)
        fold = in_job_fold.group(1) if fold is None and in_job_fold else fold
        fold = _configured_fold(job) if fold is None else fold
        row = {"job": job.name, "overrides": overrides,
               "fold": int(fold) if fold is not None and str(fold).isdigit() else fold, "run_dir": str(job)}
        if (job / "metrics.json").is_file():
            metrics = json.loads((job / "metrics.json").read_text())
            flat = {**metrics.get("val", {}), **metrics.get("test", {})}
            row.update(status="ok", error="", best_epoch=metrics.get("best_epoch"),
                       **{m: flat.get(m) for m in METRICS},
                       **{f"bias/{k}": v for k, v in (metrics.get("bias") or {}).items()})
        else:
            failure = json.loads((job / "failed.json").read_text()) if (job / "failed.json").is_file() else {}
            row.update(status="failed", error=failure.get("error", "no metrics.json and no failed.json: killed?"),
                       best_epoch=None, **{m: None for m in METRICS})
        rows.append(row)
    # a configuration is named by the overrides that differ between jobs; the shared ones are common
    keys = {k for row in rows for k in row["overrides"]}
    varying = sorted(k for k in keys if len({row["overrides"].get(k) for row in rows}) > 1)
    for row in rows:
        overrides = row.pop("overrides")
        row["config"] = " ".join(f"{k}={overrides.get(k)}" for k in varying) or "(one configuration)"
    bias = sorted({k for row in rows for k in row if k.startswith("bias/")})
    return pd.DataFrame(rows, columns=["job", "config", "fold", "status", "error", "best_epoch", *METRICS, *bias, "run_dir"])


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
    """Mean and std of every metric per configuration over its finished folds, best ``rank_by`` first."""
    columns = metric_columns(runs)
    finished = runs[runs["status"] == "ok"].astype({c: float for c in columns})
    grouped = finished.groupby("config")[columns].agg(["mean", "std"])
    grouped.columns = [f"{metric} {stat}" for metric, stat in grouped.columns]
    counts = runs.groupby("config").agg(folds=("status", lambda s: int((s == "ok").sum())),
                                        failed=("status", lambda s: int((s == "failed").sum())))
    table = counts.join(grouped, how="left").reset_index()
    return table.sort_values(f"{rank_by} mean", ascending=False, na_position="last").reset_index(drop=True)


def _pm(mean: float, std: float) -> str:
    if pd.isna(mean):
        return "-"
    return f"{mean:.4f} ± {0.0 if pd.isna(std) else std:.4f}"


def format_markdown(runs: pd.DataFrame, summary: pd.DataFrame, common: list[str] = ()) -> str:
    shown = ["val/acc_best", "val/f1", "val/loss", "test/acc", "test/f1", "test/loss"]
    lines = ["# Cross-validation summary", "", f"Common overrides: {' '.join(common) or '(none)'}", "",
             "## Configurations (mean ± std over folds, best first)", "",
             "| configuration | folds | failed | " + " | ".join(shown) + " |",
             "|---" * (3 + len(shown)) + "|"]
    for _, row in summary.iterrows():
        cells = [_pm(row[f"{m} mean"], row[f"{m} std"]) for m in shown]
        lines.append(f"| {row['config']} | {row['folds']} | {row['failed']} | " + " | ".join(cells) + " |")
    bias = [c for c in summary.columns if c.startswith("bias/") and c.endswith(" mean") and "p_value" not in c]
    if bias:
        lines += ["", "## Group accuracy and largest gap (test split, mean ± std over folds)", "",
                  "| attribute/group | " + " | ".join(summary["config"]) + " |", "|---" * (1 + len(summary)) + "|"]
        for column in bias:
            cells = [_pm(row[column], row[column.replace(" mean", " std")]) for _, row in summary.iterrows()]
            lines.append(f"| {column.removeprefix('bias/').removesuffix(' mean')} | " + " | ".join(cells) + " |")
    lines += ["", "## Runs", "", "| configuration | fold | status | best epoch | val acc | val F1 | val loss | "
              "test acc | test F1 | test loss | run folder |", "|---" * 11 + "|"]
    for _, r in runs.iterrows():
        values = " | ".join("-" if pd.isna(r[m]) else f"{r[m]:.4f}" for m in ["val/acc", "val/f1", "val/loss",
                                                                           "test/acc", "test/f1", "test/loss"])
        epoch = "-" if pd.isna(r["best_epoch"]) else int(r["best_epoch"])
        lines.append(f"| {r['config']} | {r['fold']} | {r['status']} | {epoch} | {values} | {r['run_dir']} |")
    failed = runs[runs["status"] == "failed"]
    if len(failed):
        lines += ["", "## Failed jobs", ""] + [f"- job {r['job']} ({r['config']}, fold {r['fold']}): {r['error']}"
                                               for _, r in failed.iterrows()]
    return "\n".join(lines) + "\n"


def write_summary(sweep_dir: str | Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Write ``cv_summary.csv`` (every run, then mean and std rows per configuration) and ``cv_summary.md``."""
    sweep_dir = Path(sweep_dir)
    runs = collect_runs(sweep_dir)
    summary = summarise(runs)
    stats = []
    for _, row in summary.iterrows():
        for stat in ("mean", "std"):
            stats.append({"config": row["config"], "fold": stat, "status": f"{row['folds']} ok, {row['failed']} failed",
                          **{m: row[f"{m} {stat}"] for m in metric_columns(runs)}})
    pd.concat([runs, pd.DataFrame(stats)], ignore_index=True).to_csv(sweep_dir / "cv_summary.csv", index=False)
    (sweep_dir / "cv_summary.md").write_text(format_markdown(runs, summary, common_overrides(sweep_dir)))
    return runs, summary
