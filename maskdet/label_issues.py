"""Which labels of my data are wrong? Likely label errors and outliers of a finished k-fold sweep.

    python -m maskdet.label_issues outputs/train/multiruns/<time>              # writes into the sweep
    python -m maskdet.label_issues <sweep> --out DIR --outlier-share 0.02 --top 36 --data-root /my/faces

Also run at the end of every k-fold sweep. Reads each job's held-out predictions and ranks them with
cleanlab (maskdet/evaluation/label_issues.py says how); writes label_issues.csv / .md / .png and
label_quality.csv. ``data.exclude=<sweep>/label_issues.csv`` retrains without the flagged images. Outliers
(non-faces) are ranked by BlazeFace's face probability of each image, and the gallery drawn, only from images
inside the folders given with ``--data-root`` (a sweep's files are data: they do not choose which files are
read); without them, outliers are ranked by the much weaker score from the probabilities, and the report says so.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from maskdet.errors import exit_on_error


def find(sweep: Path, out: Path | None, outlier_share: float, top: int, data_roots: list[Path]) -> dict:
    # cleanlab and matplotlib load after the arguments are read
    from maskdet.evaluation.label_issues import write_label_issues

    summary = write_label_issues(sweep, out, outlier_share=outlier_share, top=top,
                                 image_roots=[str(r) for r in data_roots])
    folder = Path(summary["folder"])
    print((folder / "label_issues.md").read_text())
    print(f"{summary['label_issues']} likely label errors and {summary['outliers']} outliers among {summary['images']} "
          f"held-out images: {folder / 'label_issues.csv'}; retrain without them with "
          f"data.exclude={folder / 'label_issues.csv'}")
    return summary


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m maskdet.label_issues", description=__doc__.split("\n")[0])
    parser.add_argument("sweep", type=Path, help="the folder of a finished k-fold sweep")
    parser.add_argument("--out", type=Path, default=None, help="where to write (default: the sweep folder)")
    parser.add_argument("--outlier-share", type=float, default=0.01,
                        help="flag this share of images as outliers: the lowest face probability (BlazeFace), or "
                             "without --data-root the lowest out-of-distribution score (default 0.01)")
    parser.add_argument("--top", type=int, default=24, help="suspects in the gallery (default 24)")
    parser.add_argument("--data-root", type=Path, action="append", default=[],
                        help="a folder the outlier score and the gallery may read images from (the dataset's "
                             "data.root; for scene sets and the embedded generator also the cache folder); "
                             "repeatable; default: none, outliers come from the probabilities and the gallery "
                             "lists the suspects without pictures")
    args = parser.parse_args(argv)
    exit_on_error(find, args.sweep, args.out, args.outlier_share, args.top, args.data_root)


if __name__ == "__main__":
    main()
