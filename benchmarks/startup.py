"""How long a command takes to answer when it does no work (refusals, --help, --cfg job), and to classify one
face crop with maskdet.predict.

    python benchmarks/startup.py [--repeats 5] [--before <git ref>]

Each command runs as a whole process, ``--repeats`` times; the table gives the median wall time and its ratio
to ``python -c "import lightning"`` measured in the same run (what every command paid before the entry point
became light). With ``--before``, the same commands also run from that commit's tree (``git archive``), side
by side. The one-crop prediction uses a checkpoint the benchmark trains first (1 epoch, 40 drawn images; it is
not timed). Run it on an otherwise idle machine: two shared cores make any timing noise.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
COMMANDS = {
    "unknown key (data.nonexistent=1)": ["-m", "maskdet.train", "data.nonexistent=1"],
    "moved key (data.synthetic.per_class=3)": ["-m", "maskdet.train", "data.synthetic.per_class=3"],
    "--help": ["-m", "maskdet.train", "--help"],
    "--cfg job": ["-m", "maskdet.train", "--cfg", "job"],
    "bad value (data.batch_size=0)": ["-m", "maskdet.train", "data.batch_size=0"],
    "bad value (bias.alpha=2)": ["-m", "maskdet.train", "bias.alpha=2"],
    "missing data.root (data=folder)": ["-m", "maskdet.train", "data=folder"],
    "predict one crop": ["-m", "maskdet.predict", "ckpt_path={ckpt}", "input={crop}"],
}
BASELINE = ["-c", "import lightning"]


def median_wall(args: list[str], tree: Path, repeats: int, cwd: Path) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        subprocess.run([sys.executable, *args], cwd=cwd, env={**os.environ, "PYTHONPATH": str(tree)},
                       capture_output=True, text=True)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def tiny_checkpoint(work: Path) -> tuple[Path, Path]:
    """A 1-epoch custom-CNN checkpoint on 40 drawn images, and one face crop to classify."""
    subprocess.run([sys.executable, "-m", "maskdet.train", "data.source.per_class=10", "data.num_folds=2",
                    "trainer.max_epochs=1", "logger=null", "callbacks.explanations=null", "paths.log_dir=trained"],
                   cwd=work, env={**os.environ, "PYTHONPATH": str(REPO)}, check=True, capture_output=True)
    ckpt = next((work / "trained").glob("train/runs/*/checkpoints/best.ckpt"))
    crop = next(p for p in (work / ".cache").rglob("*") if p.suffix.lower() in (".png", ".jpg"))
    return ckpt, crop


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--before", default=None, help="a git ref whose tree runs the same commands, for comparison")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp) / "work"
        work.mkdir()
        trees = {"now": REPO}
        if args.before:
            old = Path(tmp) / "before"
            old.mkdir()
            archive = subprocess.run(["git", "archive", args.before], cwd=REPO, capture_output=True, check=True).stdout
            subprocess.run(["tar", "-x", "-C", str(old)], input=archive, check=True)
            trees = {f"before ({args.before})": old, "now": REPO}
        ckpt, crop = tiny_checkpoint(work)
        baseline = median_wall(BASELINE, REPO, args.repeats, work)
        header = "| command | " + " | ".join(f"{name}: median s (x import lightning)" for name in trees) + " |"
        lines = [f"`import lightning` alone: {baseline:.2f} s (median of {args.repeats})", "", header,
                 "|---|" + "---|" * len(trees)]
        for label, command in COMMANDS.items():
            command = [part.format(ckpt=ckpt, crop=crop) for part in command]
            cells = [median_wall(command, tree, args.repeats, work) for tree in trees.values()]
            lines.append(f"| {label} | " + " | ".join(f"{c:.2f} ({c / baseline:.2f})" for c in cells) + " |")
            print(lines[-1], flush=True)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
