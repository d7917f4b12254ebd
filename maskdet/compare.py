"""Compare configurations: is A really better than B? (also run at the end of every multirun)

    python -m maskdet.compare outputs/train/multiruns/<time>            # a sweep: writes into it
    python -m maskdet.compare outputs/train/runs/<run1> outputs/train/runs/<run2> [--out DIR]

    python -m maskdet.compare <sweep> --primary-metric macro_f1 --correction fdr_bh --primary-attribute race

Writes comparison.md / .csv / .json, comparison_configurations.csv and comparison.png (see
maskdet/evaluation/compare.py for the tests and why: one declared family of tests per report, a paired
two-level bootstrap on a shared holdout; and what is refused: runs tested on different data).
It reads run folders only, so it needs no Hydra config, and writes through maskdet.writing (a symlink planted
where a report goes is replaced, never written through).
"""

from __future__ import annotations

import argparse
import functools
import time
from pathlib import Path

from omegaconf import OmegaConf

from maskdet.errors import exit_on_error


def compare(paths: list[Path], out: Path | None, **options) -> Path:
    from maskdet.evaluation.compare import write_comparison  # scipy, matplotlib: after the arguments are read

    if out is None:  # one sweep (or folder of runs): beside its runs; several: a new folder of its own
        single = len(paths) == 1 and paths[0].is_dir()
        out = paths[0] if single else Path("outputs") / "compare" / time.strftime("%Y-%m-%d_%H-%M-%S")
    result = write_comparison(paths, out, **options)
    print(result["markdown"])  # what was written, not what a path there now points to
    print(f"comparison of {len(result['runs'])} runs in {len(result['configurations'])} configurations: {out}")
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m maskdet.compare", description=__doc__.split("\n")[0])
    parser.add_argument("paths", nargs="+", type=Path, help="a sweep folder, a folder of runs, or run folders")
    parser.add_argument("--out", type=Path, default=None,
                        help="where to write (default: the folder given, if one; else outputs/compare/<time>)")
    default = OmegaConf.load(Path(__file__).parent / "conf" / "comparison" / "default.yaml")  # as sweeps use
    parser.add_argument("--primary-metric", default=default["primary_metric"], choices=["accuracy", "macro_f1", "ece", "gap"],
                        help="the metric whose test over folds is each pair's confirmatory test (default accuracy)")
    parser.add_argument("--correction", default=default["correction"], choices=["holm", "fdr_bh"],
                        help="how the report's one family of tests is corrected: holm (family-wise error, default) "
                             "or fdr_bh (Benjamini-Hochberg, false discovery rate)")
    parser.add_argument("--alpha", type=float, default=default["alpha"], help="the family's level (default 0.05)")
    parser.add_argument("--primary-attribute", default=default["primary_attribute"],
                        help="the attribute whose gap is compared (default: the first every run's bias report has)")
    parser.add_argument("--bootstrap", type=int, default=default["n_boot"],
                        help="image resamples of the two-level bootstrap (default 4000; smallest p = 2/(B+1))")
    parser.add_argument("--seed", type=int, default=default["seed"], help="the bootstrap's seed (default 0)")
    args = parser.parse_args(argv)
    options = {"primary_metric": args.primary_metric, "correction": args.correction, "alpha": args.alpha,
               "primary_attribute": args.primary_attribute, "n_boot": args.bootstrap, "seed": args.seed}
    exit_on_error(functools.partial(compare, **options), args.paths, args.out)


if __name__ == "__main__":
    main()
