"""Compare configurations: is A really better than B? (also run at the end of every multirun)

    python -m maskdet.compare outputs/train/multiruns/<time>            # a sweep: writes into it
    python -m maskdet.compare outputs/train/runs/<run1> outputs/train/runs/<run2> [--out DIR]

Writes comparison.md / .csv / .json, comparison_configurations.csv and comparison.png (see
maskdet/evaluation/compare.py for the tests and why, and what is refused: runs tested on different data).
It reads run folders only, so it needs no Hydra config, and writes through maskdet.writing (a symlink planted
where a report goes is replaced, never written through).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from maskdet.errors import exit_on_error


def compare(paths: list[Path], out: Path | None) -> Path:
    from maskdet.evaluation.compare import write_comparison

    if out is None:  # one sweep (or folder of runs): beside its runs; several: a new folder of its own
        single = len(paths) == 1 and paths[0].is_dir()
        out = paths[0] if single else Path("outputs") / "compare" / time.strftime("%Y-%m-%d_%H-%M-%S")
    result = write_comparison(paths, out)
    print(result["markdown"])  # what was written, not what a path there now points to
    print(f"comparison of {len(result['runs'])} runs in {len(result['configurations'])} configurations: {out}")
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m maskdet.compare", description=__doc__.split("\n")[0])
    parser.add_argument("paths", nargs="+", type=Path, help="a sweep folder, a folder of runs, or run folders")
    parser.add_argument("--out", type=Path, default=None,
                        help="where to write (default: the folder given, if one; else outputs/compare/<time>)")
    args = parser.parse_args(argv)
    exit_on_error(compare, args.paths, args.out)


if __name__ == "__main__":
    main()
