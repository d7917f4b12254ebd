"""At which dataset size does the default bias audit find the embedded dataset's planted bias?

    python benchmarks/planted_bias.py [--sizes 150 500 1500] [--seeds 3] [--epochs 10] [--strength 0.8]
                                      [--attributes race]

Each cell trains the default model (the custom CNN, 32 px) on the embedded dataset with
``data.source.bias.strength`` planted against race group 1 (black: lower contrast, blur, occlusion of the
mask), ``data.source.per_class`` images per class, one run per seed (the generator's and the training's),
with every other setting at its default: a 30 % test split, the audit's default family (gender, race, age
group and gender x race, every pair of ranked groups, Holm at 0.05). A run *finds* the bias when race's
largest gap is significant in that family with black as the worse group. Beside the detection rate: the
mean white-black accuracy gap, the black test group's size, and the minimum detectable gap the report
states for race (80 % power at the family's alpha/m). A clean control (strength 0) at the largest size
counts false findings on any attribute.

Runs go through ``python -m maskdet.train`` as a user types it (TensorBoard and explanations off); nothing
is downloaded. The table is printed and written to benchmarks/results/planted_bias[_<attributes>].md.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PLANTED = "black"  # race code 1, the generator's default planted group


def one_run(per_class: int, seed: int, strength: float, epochs: int, root: Path, attributes: list[str]) -> dict:
    task = f"planted_{per_class}_{strength}_{seed}_{'-'.join(attributes) or 'all'}"
    command = [sys.executable, "-m", "maskdet.train", f"data.source.per_class={per_class}",
               f"data.source.seed={seed}", f"seed={seed}", f"data.source.bias.strength={strength}",
               f"trainer.max_epochs={epochs}", "~logger", "callbacks.explanations=null", f"task_name={task}"]
    if attributes:  # a study of these attributes declares them as its family
        command.append(f"bias.attributes=[{','.join(attributes)}]")
    env = {**os.environ, "MASKDET_ROOT": str(root), "MASKDET_CACHE_DIR": str(root / "cache"),
           "PYTHONPATH": str(REPO)}
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
    if result.returncode:
        raise SystemExit(f"{' '.join(command)} failed:\n{result.stderr[-3000:]}")
    (run,) = (root / "outputs" / task / "runs").iterdir()
    report = json.loads((run / "bias_report.json").read_text())
    race = next(g for g in report["gaps"] if g["attribute"] == "race")
    groups = {g["group"]: g for g in report["groups"] if g["attribute"] == "race"}
    return {"found": bool(race.get("significant")) and race.get("worst_group") == PLANTED,
            "any_significant": any(g.get("significant") for g in report["gaps"]),
            "white_black": groups["white"]["accuracy"] - groups[PLANTED]["accuracy"],
            "n_black": groups[PLANTED]["n"], "detectable": race["min_detectable_gap"],
            "family": race["family_size"], "p": race["p_value"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[150, 500, 1500])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--strength", type=float, default=0.8)
    parser.add_argument("--attributes", nargs="*", default=[],
                        help="the audit's family (bias.attributes); default: the audit's default, every attribute")
    args = parser.parse_args()
    cells = [(n, args.strength) for n in args.sizes] + [(max(args.sizes), 0.0)]
    family = f"bias.attributes=[{','.join(args.attributes)}]" if args.attributes else "the default audit family"
    lines = [f"Planted bias (race: {PLANTED}), custom CNN, {args.epochs} epochs, {args.seeds} seeds per row, "
             f"{family} (Holm at 0.05):", "",
             "| per_class (images) | strength | found (black worse, significant) | any attribute significant | "
             "white - black accuracy (mean) | black test images (mean) | race: minimum detectable gap (mean) | "
             "family size | race p (Holm, median) |", "|---" * 9 + "|"]
    started = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        for per_class, strength in cells:
            runs = [one_run(per_class, seed, strength, args.epochs, Path(tmp), args.attributes) for seed in range(args.seeds)]
            print(f"per_class={per_class} strength={strength}: {runs}", flush=True)
            mean = lambda key, runs=runs: statistics.mean(r[key] for r in runs)  # noqa: E731
            lines.append(f"| {per_class} ({4 * per_class}) | {strength} | {sum(r['found'] for r in runs)}/{len(runs)} | "
                         f"{sum(r['any_significant'] for r in runs)}/{len(runs)} | {mean('white_black'):+.3f} | "
                         f"{mean('n_black'):.0f} | {mean('detectable'):.3f} | {runs[0]['family']} | "
                         f"{statistics.median(r['p'] for r in runs):.3g} |")
    lines += ["", f"({time.time() - started:.0f} s; `python benchmarks/planted_bias.py "
              f"--sizes {' '.join(map(str, args.sizes))} --seeds {args.seeds} --epochs {args.epochs} "
              f"--strength {args.strength}"
              + (f" --attributes {' '.join(args.attributes)}" if args.attributes else "") + "`)"]
    text = "\n".join(lines) + "\n"
    print(text)
    out = REPO / "benchmarks" / "results" / f"planted_bias{''.join('_' + a for a in args.attributes)}.md"
    out.parent.mkdir(exist_ok=True)
    out.write_text(text)


if __name__ == "__main__":
    main()
