"""How many planted label errors and non-faces does a k-fold sweep's label-issue search find?

    python benchmarks/label_issues.py [--per-class 300] [--noise 0.05] [--outliers 12] [--folds 5] [--epochs 10]
                                      [--seeds 0 1] [--repeats 3] [--keep DIR] [--trainer gpu] [--set data.image_size=64]
    python benchmarks/label_issues.py --rescore DIR [--per-class 300] [--noise 0.05] [--outliers 12] [--seeds 0 1]

For each seed, the embedded generator plants ``--noise`` flipped labels (uniformly to another class) and
``--outliers`` non-face images in its four class folders (listed in ``<dataset>.planted.csv``); a k-fold sweep
of the default model (the custom CNN, 32 px, every other setting at its default) runs through
``python -m maskdet.train -m data.fold=0,...`` as a user types it, and ends by writing label_issues.csv. The
flagged images are scored against the planted ones: precision (flagged that were planted) and recall
(planted that were flagged), overall, per kind, and for the validation images (one model each, or one per
repeat averaged with ``--repeats``: ``data.fold_seed=0,1,...``) and the test images (every run's model,
averaged) apart. Beside them: the mean test accuracy of the folds, which
bounds precision (a held-out model's own errors look like label errors). The table is printed and written
to benchmarks/results/label_issues.md.

``--rescore DIR`` trains nothing: it reads the held-out probabilities an earlier run kept (``--keep DIR``),
draws the same dataset again (the generator is deterministic), and scores today's label-issue search on them
(cleanlab's filter and BlazeFace's face probabilities of the images), printing the rows only.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from maskdet.data.synthetic import generate, make_spec, planted_path  # noqa: E402
from maskdet.evaluation.label_issues import (  # noqa: E402
    face_probabilities,
    find_issues,
    held_out_predictions,
    score_against_truth,
)


def scored(quality: pd.DataFrame, planted: pd.DataFrame) -> dict:
    """Precision and recall overall, and for the validation images (one model each, or one per repeat averaged)
    and the test images (every run's model averaged) apart."""
    score = score_against_truth(quality, planted)
    score["by_split"] = {split: score_against_truth(quality[quality["split"] == split], planted)
                         for split in ("val", "test")}
    score["images"] = len(quality)
    return score


def rescore(args, seed: int, root: Path) -> dict:
    """Today's search on the held-out probabilities that ``--keep`` kept for ``seed``, with the images drawn again."""
    kept = Path(args.rescore) / f"seed_{seed}"
    frame = pd.read_csv(kept / "held_out_predictions.csv", keep_default_na=False)
    data = generate(make_spec(args.per_class, seed, label_noise=args.noise, outliers=args.outliers), root / "data")
    planted = pd.read_csv(planted_path(data))
    if sorted(planted["path"]) != sorted(pd.read_csv(kept / "planted.csv")["path"]):
        raise SystemExit(f"{kept}: the dataset drawn again plants other images; pass the --per-class, --noise and "
                         "--outliers of the run that kept it.")
    frame["path"] = [str(data / Path(p).parent.name / Path(p).name) for p in frame["path"]]
    names = [c.removeprefix("prob_") for c in frame.columns if c.startswith("prob_")]
    faces, why_not = face_probabilities(list(frame["path"]), [str(data)])
    if faces is None:
        raise SystemExit(f"no face probabilities: {why_not}")
    score = scored(find_issues(frame, names, 0.01, faces), planted)
    score["test_acc"] = float("nan")  # not kept
    return score


def one_sweep(args, seed: int, root: Path) -> dict:
    command = [sys.executable, "-m", "maskdet.train", "-m", f"data.fold={','.join(map(str, range(args.folds)))}",
               f"data.num_folds={args.folds}", f"data.source.per_class={args.per_class}", f"data.source.seed={seed}",
               f"seed={seed}", f"data.source.label_noise={args.noise}", f"data.source.outliers={args.outliers}",
               f"trainer.max_epochs={args.epochs}", f"trainer={args.trainer}", "~logger", "callbacks.explanations=null", f"task_name=label_{seed}",
               *([f"data.fold_seed={','.join(map(str, range(args.repeats)))}"] if args.repeats > 1 else []), *args.set]
    env = {**os.environ, "MASKDET_ROOT": str(root), "MASKDET_CACHE_DIR": str(root / "cache"), "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)}
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
    if result.returncode:
        raise SystemExit(f"{' '.join(command)} failed:\n{result.stderr[-3000:]}")
    (sweep,) = (root / "outputs" / f"label_{seed}" / "multiruns").iterdir()
    (planted_csv,) = (root / "cache" / "synthetic").glob("*.planted.csv")
    quality = pd.read_csv(sweep / "label_quality.csv", keep_default_na=False)
    planted = pd.read_csv(planted_csv)
    score = scored(quality, planted)
    summary = pd.read_csv(sweep / "cv_summary.csv")
    score["test_acc"] = float(summary.loc[summary["fold"] == "mean", "test/acc"].mean())  # over the repeats
    if args.keep:  # the ranked list and the truth, for a closer look
        keep = Path(args.keep) / f"seed_{seed}"
        keep.mkdir(parents=True, exist_ok=True)
        quality.to_csv(keep / "label_quality.csv", index=False)
        planted.to_csv(keep / "planted.csv", index=False)
        held_out_predictions(sweep)[0].to_csv(keep / "held_out_predictions.csv", index=False)  # every class's probability
    return score


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--per-class", type=int, default=300)
    parser.add_argument("--noise", type=float, default=0.05)
    parser.add_argument("--outliers", type=int, default=12)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--repeats", type=int, default=1, help="repeated k-fold: the folds drawn this many times (data.fold_seed)")
    parser.add_argument("--trainer", default="default", help="the trainer config (default: the accelerator Lightning finds); gpu, cpu")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="another override for every fold, as maskdet.train reads it (repeatable; e.g. data.image_size=64)")
    parser.add_argument("--keep", default=None, help="copy each sweep's label_quality.csv, planted.csv and held-out probabilities here")
    parser.add_argument("--rescore", default=None, metavar="DIR",
                        help="train nothing: score today's search on the probabilities an earlier --keep DIR kept")
    args = parser.parse_args()
    if args.repeats < 1:
        parser.error(f"--repeats {args.repeats}: the folds are drawn at least once")
    rows, started = [], time.time()
    for seed in args.seeds:
        with tempfile.TemporaryDirectory(prefix="maskdet-label-") as tmp:
            score = (rescore if args.rescore else one_sweep)(args, seed, Path(tmp))
        kinds = score["by_kind"]
        rows.append(f"| {seed} | {score['images']} | {score['test_acc']:.3f} | {score['planted']} | {score['flagged']} | "
                    f"{score['found']} | {score['precision']:.2f} | {score['recall']:.2f} | "
                    + " | ".join(f"{kinds.get(k, {}).get('found', 0)}/{kinds.get(k, {}).get('planted', 0)}"
                                 for k in ("flipped", "outlier")) + " | "
                    + " | ".join(f"{part['precision']:.2f} / {part['recall']:.2f}" for part in score["by_split"].values())
                    + " |")
        print(rows[-1], flush=True)
    run = (f"today's search on the held-out probabilities kept in {args.rescore}" if args.rescore else
           f"the custom CNN, {args.folds} folds{f' x {args.repeats} repeats' if args.repeats > 1 else ''}, {args.epochs} "
           f"epochs{''.join(', ' + o for o in args.set)}")
    table = "\n".join([
        f"Planted: {args.noise:.0%} flipped labels and {args.outliers} non-faces among {4 * args.per_class} embedded "
        f"images; {run}; flagged = cleanlab label issue or lowest "
        f"1 % outlier score ({time.time() - started:.0f} s on this machine).", "",
        "| seed | images | mean test acc | planted | flagged | found | precision | recall | flipped found | "
        "non-faces found | val images: precision / recall | test images: precision / recall |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|", *rows])
    print(table)
    if args.rescore:
        return
    out = REPO / "benchmarks" / "results" / "label_issues.md"
    out.write_text(f"# Label issues found in planted noise\n\n`python benchmarks/label_issues.py "
                   f"{' '.join(sys.argv[1:])}`\n\n{table}\n")
    print(json.dumps({"written": str(out)}))


if __name__ == "__main__":
    main()
