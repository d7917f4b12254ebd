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


def _overrides(job: Path) -> dict[str, str]:
    path = job / ".hydra" / "overrides.yaml"
    items = yaml.safe_load(path.read_text()) if path.is_file() else []
    return dict(item.lstrip("+~").split("=", 1) for item in items or [] if "=" in item)


def collect_runs(sweep_dir: str | Path) -> pd.DataFrame:
    """One row per job of the sweep: its configuration, fold, status, metrics, error and folder."""
    rows = []
    for job in sorted(Path(sweep_dir).iterdir(), key=lambda p: (len(p.name), p.name)):
        if not any((job / name).exists() for name in (".hydra", "metrics.json", "failed.json")):
            continue
        overrides = _overrides(job)
        fold = overrides.pop(FOLD_KEY, None)
        in_job_fold = re.fullmatch(r"fold_(\d+)", job.name)  # folds run inside one job (cv_in_job)
        fold = in_job_fold.group(1) if fold is None and in_job_fold else fold
        row = {"job": job.name, "overrides": overrides,
               "fold": int(fold) if fold is not None and str(fold).isdigit() else fold, "run_dir": str(job)}
        if (job / "metrics.json").is_file():
            metrics = json.loads((job / "metrics.json").read_text())
            flat = {**metrics.get("val", {}), **metrics.get("test", {})}
            best = re.search(r"epoch_(\d+)", str(metrics.get("best_checkpoint") or ""))
            row.update(status="ok", error="", best_epoch=int(best.group(1)) if best else None,
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
