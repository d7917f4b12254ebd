"""The leakage study's table: test accuracy of an image-level split vs a grouped split of the same data.

Each job of the ``leakage_study`` multirun tests one split policy (``data.group_by``) on its own test split.
Per job: accuracy with its Wilson 95 % interval; per fold, the inflation (image-level minus grouped) with
its Newcombe 95 % interval and a two-proportion z-test. The two test splits hold different images, so the
proportions are compared as independent samples (not McNemar's paired test).

    python -m maskdet.evaluation.leakage <sweep folder>
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd
import yaml

from maskdet.errors import DataError, exit_on_error
from maskdet.evaluation.statistics import newcombe_interval, two_proportion_test, wilson_interval
from maskdet.writing import md, write_csv, write_text

IMAGE_LEVEL = "image-level (data.group_by=null)"


def _policy(config: dict) -> str:
    group_by = (config.get("data") or {}).get("group_by")
    return IMAGE_LEVEL if group_by in (None, "none") else f"grouped (data.group_by={group_by})"


def collect(sweep_dir: str | Path) -> pd.DataFrame:
    """One row per tested job: split policy, fold, test images, correct predictions, accuracy and interval."""
    rows = []
    for job in sorted(p for p in Path(sweep_dir).iterdir() if (p / ".hydra" / "config.yaml").is_file()):
        config = yaml.safe_load((job / ".hydra" / "config.yaml").read_text())
        predictions = job / "predictions.csv"
        if not predictions.is_file():
            continue  # failed or untested jobs are listed by cv_summary.md
        frame = pd.read_csv(predictions, usecols=["label", "prediction"])
        correct, n = int((frame["label"] == frame["prediction"]).sum()), len(frame)
        low, high = wilson_interval(correct, n)
        duplicates = (config.get("data") or {}).get("duplicates")
        rows.append({"policy": _policy(config), "duplicates": duplicates, "fold": (config.get("data") or {}).get("fold"),
                     "n": n, "correct": correct, "accuracy": correct / n if n else float("nan"),
                     "accuracy_low": low, "accuracy_high": high, "job": job.name})
    return pd.DataFrame(rows)


def inflation(runs: pd.DataFrame) -> pd.DataFrame:
    """Per fold, image-level accuracy minus each grouped policy's accuracy, with interval and p-value."""
    pairs = []
    for fold, part in runs.groupby("fold"):
        image = part[part["policy"] == IMAGE_LEVEL]
        for _, a in image.iterrows():
            for _, b in part[part["policy"] != IMAGE_LEVEL].iterrows():
                low, high = newcombe_interval(a["correct"], a["n"], b["correct"], b["n"])
                _, p = two_proportion_test(a["correct"], a["n"], b["correct"], b["n"])
                pairs.append({"fold": fold, "grouped": b["policy"], "inflation": a["accuracy"] - b["accuracy"],
                              "inflation_low": low, "inflation_high": high, "p_value": p})
    return pd.DataFrame(pairs)


def write_leakage_study(sweep_dir: str | Path) -> str:
    """Write leakage_study.md and leakage_study.csv in ``sweep_dir``; return the markdown."""
    sweep_dir = Path(sweep_dir)
    runs = collect(sweep_dir)
    if runs.empty or (runs["policy"] == IMAGE_LEVEL).all() or (runs["policy"] != IMAGE_LEVEL).all():
        raise DataError(f"{sweep_dir} has no tested image-level and grouped runs to compare (predictions.csv of "
                        "jobs with data.group_by=null and with a data.group_by): run "
                        "python -m maskdet.train +experiment=leakage_study.")
    pairs = inflation(runs)
    write_csv(runs, sweep_dir / "leakage_study.csv")
    lines = ["# Leakage study: the same data split by image and by group", "",
             "| split policy | fold | test images | accuracy [95 % Wilson] |", "|---|---|---|---|"]
    for _, r in runs.sort_values(["fold", "policy"]).iterrows():
        lines.append(f"| {md(r['policy'])} | {md(r['fold'])} | {r['n']} | {r['accuracy']:.4f} "
                     f"[{r['accuracy_low']:.4f}, {r['accuracy_high']:.4f}] |")
    lines += ["", "| fold | inflation: image-level minus | difference [95 % Newcombe] | p-value |", "|---|---|---|---|"]
    for _, p in pairs.iterrows():
        lines.append(f"| {md(p['fold'])} | {md(p['grouped'])} | {p['inflation']:+.4f} [{p['inflation_low']:+.4f}, "
                     f"{p['inflation_high']:+.4f}] | {p['p_value']:.3g} |")
    lines += ["", "A positive difference is accuracy that the image-level split gains from test images whose "
                  "photograph (under another mask) is in training; an interval covering 0 means no inflation was "
                  "measured at this sample size."]
    text = "\n".join(lines) + "\n"
    write_text(sweep_dir / "leakage_study.md", text)
    return text


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("sweep_dir", help="the multirun folder of +experiment=leakage_study")
    print(exit_on_error(write_leakage_study, parser.parse_args(argv).sweep_dir))


if __name__ == "__main__":
    main()
