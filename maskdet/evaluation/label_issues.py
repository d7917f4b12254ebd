"""Likely label errors and outliers of a k-fold sweep, from the predictions each image got while held out.

A k-fold sweep predicts every image of the data while no model trained on it: each fold's validation images
once (``calibration/val_predictions.csv``, the best checkpoint's calibrated probabilities) and the holdout
test images by every fold's model (``predictions.csv``; averaged over the folds). A repeated k-fold (the
folds drawn again with ``data.fold_seed=0,1,2``, the test split unchanged) predicts each validation image once
per repeat, by models that never trained on it, and those predictions are averaged too: one model's
mistakes look like label errors, and averaging several removes part of them. cleanlab, the field's
library for confident learning (Northcutt et al. 2021), ranks these out-of-fold probabilities:

* **label issues**: ``cleanlab.rank.get_label_quality_scores`` (self-confidence: the held-out probability of
  the given label) ranks every image, and ``cleanlab.filter.find_label_issues`` with ``low_self_confidence``
  flags the lowest of them, as many as cleanlab's confident joint estimates are mislabelled
  (``cleanlab.count.num_label_issues``), but never more than half of a class, outliers included
  (``at_most_half_of_each_class``). Its default, prune by noise rate, flags images per pair of classes;
  on the planted-noise benchmark it was less precise at about the same recall (``LABEL_FILTER``). The
  suggested label is the held-out models' most probable class.
* **outliers** (images that are not faces at all): BlazeFace, the face detector shipped for
  ``predict detect=true``, gives each image its face probability (``BlazeFaceDetector.face_probability``); the
  lowest ``outlier_share`` are flagged. It was trained on faces in the wild, not on the mask classes, so it
  sees what the picture shows, which the mask classifier's probabilities cannot tell: a non-face gets some
  class, often confidently. Images are read only inside the folders the caller vouches for; when they cannot
  all be read there (or ai-edge-litert is not installed), ``cleanlab.outlier.OutOfDistribution`` scores each
  image from its probabilities alone instead, a much weaker score, and the report says why.

Written into the sweep folder (or ``out``): ``label_issues.csv`` (the flagged images only, worst first:
path, given label, suggested label, scores, why, split, demographic columns; ``data.exclude=<this file>``
retrains without them), ``label_quality.csv`` (every image, ranked), ``label_issues.md`` and
``label_issues.png`` (a gallery of the top suspects). Every file read here is a stranger's: columns and
values are checked as data, and text is escaped where it lands.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from maskdet import runfolder
from maskdet.data.demographics import DEMOGRAPHIC_COLUMNS
from maskdet.errors import DataError
from maskdet.evaluation.calibration import VAL_PREDICTIONS
from maskdet.evaluation.cv import collect_jobs, run_folders, summarise
from maskdet.writing import md, one_line, write_csv, write_text

log = logging.getLogger("maskdet.label_issues")

CALIBRATION_DIR = "calibration"
BASE_COLUMNS = ["path", "label"]
# cleanlab's find_label_issues filter. On the planted-noise benchmark (benchmarks/results/label_issues.md, four
# sweeps of seed 0) low_self_confidence flagged at a precision of 0.75-0.86 where the default prune_by_noise_rate
# had 0.55-0.64, at a recall 0.02-0.03 lower: its flags are the lowest label quality, the order the report ranks by.
LABEL_FILTER = "low_self_confidence"
OUTLIERS_BY_FACE = "BlazeFace's face probability"
OUTLIERS_BY_PROBABILITIES = "cleanlab's out-of-distribution score from the probabilities"


def _read_predictions(path: Path, class_names: list[str] | None) -> tuple[pd.DataFrame, list[str]]:
    """One predictions file (``predictions.csv`` or ``val_predictions.csv``) checked as data: a path and a
    label per row, one probability column per class, probabilities finite and in [0, 1]."""
    try:
        frame = pd.read_csv(path, keep_default_na=False, dtype={"path": str, "label": str})
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, ValueError) as err:
        raise DataError(f"{path} is not a readable predictions CSV ({type(err).__name__}): rerun the job, or leave "
                        "it out of the sweep folder.") from None
    names = [c.removeprefix("prob_") for c in frame.columns if c.startswith("prob_")]
    missing = [c for c in BASE_COLUMNS if c not in frame.columns]
    if missing or len(names) < 2:
        raise DataError(f"{path} has no {', '.join(missing) or 'prob_<class> columns'}: it is not a predictions file "
                        "written by maskdet.train.")
    if class_names is not None and names != class_names:
        raise DataError(f"{path} predicts the classes {_shown(names)} but another job of the sweep {_shown(class_names)}: "
                        "the folds were not trained on one problem.")
    probs = frame[[f"prob_{n}" for n in names]].apply(pd.to_numeric, errors="coerce").to_numpy(dtype=float)
    if not np.isfinite(probs).all() or (probs < 0).any() or (probs > 1).any():
        raise DataError(f"{path} holds probabilities that are not numbers in [0, 1]: it was changed after "
                        "maskdet.train wrote it; rerun the job.")
    unknown = sorted(set(frame["label"]) - set(names))
    if unknown:
        raise DataError(f"{path} lists labels {_shown(unknown, 5)} that are not among its classes {_shown(names)}.")
    return frame, names


def _shown(names, limit: int = 8) -> list[str]:
    """Class names or labels from a stranger's CSV, as a message shows them: a few, each short and on one line."""
    return [one_line(n)[:40] for n in list(names)[:limit]]


def held_out_predictions(sweep_dir: str | Path) -> tuple[pd.DataFrame, list[str], dict]:
    """Every image's out-of-fold probabilities in one frame (``split`` val / test, ``folds``: how many
    models' predictions were averaged), the class names, and where they came from. The configuration
    used is the sweep's best by mean validation accuracy over all its runs (the only one in a plain k-fold
    sweep), with its repeats: a repeated k-fold (``data.fold_seed=0,1,2``) predicts each validation image once per repeat,
    and those predictions are averaged as the test images' are."""
    sweep_dir = Path(sweep_dir)
    folders = run_folders([sweep_dir])
    if not folders:
        raise DataError(f"{sweep_dir} holds no runs of a sweep: pass the folder of a k-fold sweep "
                        "(maskdet-train -m data.fold=0,1,2,3,4 ...).")
    runs = collect_jobs(folders)
    finished = runs[runs["status"] == "ok"]
    if finished.empty:
        raise DataError(f"no job of {sweep_dir} finished: there are no held-out predictions to read.")
    # rank whole families (a configuration with all its repeats) by their mean, not one lucky repeat
    family = summarise(runs.assign(config=runs["repeat_of"]))["config"].iloc[0]
    members = runs[runs["repeat_of"] == family]
    launched = int(members["config"].nunique())  # repeats the sweep ran, finished or not
    chosen = members[members["status"] == "ok"]
    failed = [_relative_name(run, sweep_dir) for run in members.loc[members["status"] != "ok", "run_dir"]]
    folds = sorted({int(f) for f in chosen["fold"] if str(f).lstrip("-").isdigit()})
    if len(folds) < 2:
        raise DataError(f"{sweep_dir}: the configuration {one_line(family)} has finished runs for {len(folds)} fold(s); "
                        "out-of-fold predictions need a k-fold sweep (data.fold=0,1,...,k-1).")
    names, val_parts, test_parts, missing = None, [], [], []
    for _, repeat in chosen.groupby("config", sort=False):
        parts = []
        for run in map(Path, repeat["run_dir"]):
            val_path = run / CALIBRATION_DIR / VAL_PREDICTIONS
            if not val_path.is_file():
                missing.append(_relative_name(run, sweep_dir))
                continue
            val, names = _read_predictions(val_path, names)
            parts.append(val.assign(run=str(run)))  # the whole path: cv_in_job folds are all called fold_<k>
            if (run / runfolder.PREDICTIONS).is_file():
                test, names = _read_predictions(run / runfolder.PREDICTIONS, names)
                test_parts.append(test.assign(run=str(run)))
        if parts:
            val = pd.concat(parts, ignore_index=True)
            twice = val["path"].duplicated(keep=False)
            if twice.any():
                raise DataError(f"{int(twice.sum())} images were validation images of more than one fold "
                                f"(e.g. {one_line(val.loc[twice, 'path'].iloc[0])}): the runs do not share one split "
                                "(different data.seed or data.num_folds?), so their predictions are not out-of-fold.")
            val_parts.append(val)
    if not val_parts:
        raise DataError(f"no job of {sweep_dir} wrote {CALIBRATION_DIR}/{VAL_PREDICTIONS} (trained with "
                        "callbacks.calibration=null, or by an older maskdet): rerun the sweep with the default callbacks.")
    prob_columns = [f"prob_{n}" for n in names]
    val = _averaged(pd.concat(val_parts, ignore_index=True), prob_columns, "validation")
    frames = [val.assign(split="val")]
    if test_parts:
        averaged = _averaged(pd.concat(test_parts, ignore_index=True), prob_columns, "test")
        frames.append(averaged.assign(split="test"))
        overlap = set(val["path"]) & set(averaged["path"])
        if overlap:
            raise DataError(f"{len(overlap)} images are both validation and test images across the runs (e.g. "
                            f"{one_line(sorted(overlap)[0])}): the runs do not share one split.")
    frame = pd.concat(frames, ignore_index=True)
    source = {"config": family if launched > 1 else members["config"].iloc[0], "folds": folds, "repeats": launched,
              "runs": int(len(chosen)), "runs_without_val_predictions": missing, "failed_runs": failed,
              # predicted by fewer models than repeats were launched (a run failed or wrote no predictions, or
              # the repeats held out different images, as data.cap_per_class draws them)
              "val_images_in_fewer_repeats": int((val["folds"] < launched).sum()),
              "val_images": int(len(val)), "test_images": int(len(frame) - len(val))}
    return frame, names, source


def _relative_name(run, sweep_dir: Path) -> str:
    """A run folder named for a report: its path inside the sweep (``3_lr-0.01/fold_2``), else its own name."""
    try:
        return str(Path(run).relative_to(sweep_dir))
    except ValueError:
        return Path(run).name


def _averaged(predictions: pd.DataFrame, prob_columns: list[str], split: str) -> pd.DataFrame:
    """One row per image: its probabilities averaged over the runs that predicted it (``folds``: how many)."""
    labels = predictions.groupby("path", sort=False)["label"].nunique()
    if (labels > 1).any():
        raise DataError(f"the {split} image {one_line(labels[labels > 1].index[0])} has different labels in "
                        "different runs' predictions: the runs were not trained and tested on the same data.")
    demographics = [c for c in DEMOGRAPHIC_COLUMNS if c in predictions.columns]
    return predictions.groupby("path", sort=False).agg(
        label=("label", "first"), **{c: (c, "first") for c in demographics},
        **{c: (c, "mean") for c in prob_columns}, folds=("run", "nunique")).reset_index()


def _vouched(roots: Sequence[str]) -> list[Path]:
    """The folders the caller vouches for, resolved: the only places this module opens images from."""
    return [Path(r).expanduser().resolve() for r in roots]


def _inside(path, folders: list[Path]) -> bool:
    """Whether ``path`` (from a sweep's CSV: a stranger's) is an image file inside one of ``folders``, links and
    ``..`` resolved (``images.path_problem``)."""
    from maskdet.data.images import path_problem

    return any(path_problem(Path(str(path)), folder) is None for folder in folders)


def face_probabilities(paths: Sequence[str], roots: Sequence[str]) -> tuple[np.ndarray | None, str]:
    """BlazeFace's face probability of every image (``BlazeFaceDetector.face_probability``), or None and why
    not. The paths come from a sweep's CSVs, which anyone may have written, so only files inside ``roots``
    (folders the caller vouches for) are read, as for the gallery. Every image must be scored, or none: the
    lowest share of a ranking of some of them would not be the lowest of the data."""
    from maskdet.data.images import load_rgb, path_problem
    from maskdet.detect import BlazeFaceDetector
    from maskdet.errors import ConfigError

    inside = _vouched(roots)
    if not inside:
        return None, ("no data folder was given to read the images from: name the dataset's folders with "
                      "--data-root (data.root, and for generated images and scene crops the cache folder)")
    outside = [p for p in paths if not _inside(p, inside)]
    if outside:
        reason = path_problem(Path(str(outside[0])), inside[0]) or "outside the given data folders"
        return None, (f"{len(outside)} of the {len(paths)} images cannot be read inside the given data folders "
                      f"(e.g. {one_line(outside[0])[:200]}: {reason}); if the dataset moved, name its folders "
                      "with --data-root")
    try:
        detector = BlazeFaceDetector(model="short_range", min_face=0, verify_below=0)
    except ConfigError as err:  # ai-edge-litert is not installed
        return None, f"the face detector cannot run here: {err}"
    log.info("label issues: scoring %d images with BlazeFace for outliers (non-faces)", len(paths))
    scores = np.empty(len(paths))
    for i, path in enumerate(paths):
        try:
            image = load_rgb(path)
            image.thumbnail((4 * detector.size, 4 * detector.size))  # a strip 8 x 8,000,000 px: not padded to a square
            scores[i] = detector.face_probability(np.asarray(image))
        except Exception as err:  # noqa: BLE001 - a stranger's file the decoder or the model cannot take: said, and
            # the outliers come from the probabilities instead, not from a ranking of the other images alone
            return None, f"{one_line(path)[:200]} could not be scored ({type(err).__name__}: {one_line(str(err))[:200]})"
    return scores, ""


def at_most_half_of_each_class(flagged: np.ndarray, labels: np.ndarray, quality: np.ndarray,
                               already: np.ndarray) -> np.ndarray:
    """``flagged`` cut so that, with the images ``already`` flagged (the outliers), at most half of each given
    class's images are flagged (a class of one image: none); the lowest label quality stays. Confident learning
    assumes that most images of a class carry the right label (Northcutt et al. 2021: a diagonally dominant
    noise matrix); when it estimates more errors than that, the held-out models are too weak to tell (near
    chance, they contradict every class), and excluding every flagged image would empty a class. Not in
    cleanlab: its own per-class floor (``min_examples_per_class``) applies only to its prune_by_* filters."""
    kept = flagged.copy()
    for label in np.unique(labels):
        members = np.flatnonzero(flagged & ~already & (labels == label))
        most = max(0, int((labels == label).sum()) // 2 - int((already & (labels == label)).sum()))
        if len(members) > most:
            kept[members[np.argsort(quality[members], kind="stable")[most:]]] = False
    return kept


def find_issues(frame: pd.DataFrame, class_names: list[str], outlier_share: float = 0.01,
                face_scores: np.ndarray | None = None) -> pd.DataFrame:
    """``frame`` (held-out probabilities) with cleanlab's verdicts: ``label_quality`` (0 worst), ``label_issue``
    (at most half of a class, outliers included: ``at_most_half_of_each_class``; ``label_issue_estimated``:
    cleanlab's flags before that), ``suggested_label``, ``outlier_score`` (0 most unlike any class:
    ``face_scores``, one per row, when given, else cleanlab's score from the probabilities), ``outlier`` and
    ``why``; worst first."""
    from cleanlab.filter import find_label_issues
    from cleanlab.outlier import OutOfDistribution
    from cleanlab.rank import get_label_quality_scores

    probs = frame[[f"prob_{n}" for n in class_names]].to_numpy(dtype=float)
    probs = np.clip(probs, 1e-12, None)
    probs /= probs.sum(1, keepdims=True)
    labels = frame["label"].map({n: i for i, n in enumerate(class_names)}).to_numpy(dtype=int)
    present = np.unique(labels)
    if len(present) < 2:
        raise DataError("the held-out images carry fewer than two labels: there is nothing to compare labels across.")
    out = frame.copy()
    out["label_quality"] = get_label_quality_scores(labels, probs, method="self_confidence")
    estimated = find_label_issues(labels, probs, filter_by=LABEL_FILTER)
    out["suggested_label"] = np.asarray(class_names, dtype=object)[probs.argmax(1)]
    if face_scores is not None:
        face_scores = np.asarray(face_scores, dtype=float)
        if face_scores.shape != (len(frame),) or not np.isfinite(face_scores).all() or \
                (face_scores < 0).any() or (face_scores > 1).any():
            raise DataError(f"face_scores must hold one probability in [0, 1] per held-out image ({len(frame)}), "
                            f"got shape {face_scores.shape} with values outside it or missing.")
    out["outlier_score"] = (face_scores if face_scores is not None else
                            OutOfDistribution().fit_score(pred_probs=probs, labels=labels, verbose=False))
    flagged = max(1, math.ceil(outlier_share * len(out))) if outlier_share > 0 else 0
    out["outlier"] = False
    if flagged:
        out.loc[out["outlier_score"].nsmallest(flagged).index, "outlier"] = True
    out["label_issue"] = at_most_half_of_each_class(estimated, labels, out["label_quality"].to_numpy(),
                                                    out["outlier"].to_numpy())
    out["label_issue_estimated"] = estimated  # cleanlab's own flags, before the cap: the report names the difference
    out["why"] = np.select([out["label_issue"] & out["outlier"], out["label_issue"], out["outlier"]],
                           ["label issue, outlier", "label issue", "outlier"], "")
    return out.sort_values(["label_quality", "outlier_score"], kind="stable").reset_index(drop=True)


def _no_better_than(successes: int, trials: int, rate: float, alpha: float = 0.05) -> bool:
    """Whether ``successes`` of ``trials`` are not significantly more than ``rate`` would give (one-sided exact
    binomial test at ``alpha``): the held-out models' agreement against always answering the largest class."""
    from scipy.stats import binomtest

    return bool(binomtest(successes, trials, rate, alternative="greater").pvalue >= alpha)


def score_against_truth(quality: pd.DataFrame, planted: pd.DataFrame) -> dict:
    """Precision and recall of the flagged images of ``quality`` (every held-out image with its ``why``, as
    in label_quality.csv) against a list of planted ones (the embedded generator's ``<dataset>.planted.csv``,
    paths relative to the dataset), matched on the path's last two parts (class folder / file name), so the
    dataset may lie anywhere. Planted images the sweep never held out (excluded) are not counted."""
    def key(path) -> str:
        return "/".join(Path(str(path)).parts[-2:])

    why = quality["why"].fillna("").astype(str)
    flagged = {key(p) for p in quality.loc[why != "", "path"]}
    seen = {key(p) for p in quality["path"]}
    truth = {key(p) for p in planted["path"]} & seen  # planted images the sweep held out (all, unless excluded)
    hits = flagged & truth
    by_kind = {kind: {"planted": int(sum(key(p) in seen for p in part["path"])),
                      "found": int(sum(key(p) in flagged for p in part["path"]))} for kind, part in planted.groupby("kind")}
    return {"flagged": len(flagged), "planted": len(truth), "found": len(hits),
            "precision": len(hits) / len(flagged) if flagged else math.nan,
            "recall": len(hits) / len(truth) if truth else math.nan, "by_kind": by_kind}


def format_markdown(issues: pd.DataFrame, source: dict, outlier_share: float, shown: int = 30) -> str:
    flagged = issues[issues["why"] != ""]
    by_split = flagged.groupby("split").size().to_dict()
    # a mask hides much of a face: if the face probability flags one class's faces more, the report shows it
    outliers_by_label = issues.loc[issues["outlier"], "label"].value_counts().sort_index().to_dict()
    repeats = source.get("repeats", 1)
    lines = ["# Label issues (out-of-fold predictions, cleanlab)", "",
             f"Configuration {md(source['config'])}, folds {', '.join(map(str, source['folds']))}"
             + (f", {repeats} repeats (data.fold_seed)" if repeats > 1 else "") + ": "
             f"{source['val_images']} validation images ("
             + ("each predicted once, by the model that did not train on it" if repeats == 1 else
                f"each predicted once per repeat, by the model that did not train on it; the {repeats} "
                "predictions averaged") + f") and {source['test_images']} test images (probabilities averaged "
             "over every run's model).", "",
             f"**{int(flagged['label_issue'].sum())} likely label errors** (cleanlab `find_label_issues` with "
             f"`{LABEL_FILTER}`: the lowest label quality, as many images as cleanlab estimates are mislabelled, "
             "and at most half of a class with its outliers) "
             + (f"and **{int(flagged['outlier'].sum())} outliers** (the lowest {outlier_share:.1%} by "
                f"{source.get('outlier_method', OUTLIERS_BY_PROBABILITIES)}; by given label: "
                + ", ".join(f"{md(label)} {n}" for label, n in outliers_by_label.items()) + ")"
                if outlier_share > 0 else "and no outliers (outlier share 0)") + ": "
             + ", ".join(f"{n} in {md(s)}" for s, n in sorted(by_split.items())) + ".", "",
             "Label quality is the held-out probability of the given label (0: the held-out model is sure the label "
             "is wrong). " + ("The outlier score is BlazeFace's face probability (a face detector trained on faces "
                              "in the wild, not on these classes; 0: nothing like a face). "
                              if source.get("outlier_method") == OUTLIERS_BY_FACE else
                              f"The outlier score is {OUTLIERS_BY_PROBABILITIES} (0: unlike any class). ")
             + "A flag is a suspect to look at, not a verdict: `data.exclude=label_issues.csv` retrains "
             "without the flagged images.", ""]
    agree = int((issues["suggested_label"] == issues["label"]).sum())
    largest = float(issues["label"].value_counts(normalize=True).iloc[0])
    if _no_better_than(agree, len(issues), largest):
        lines += [f"**Warning:** the held-out models agree with the given labels on {agree / len(issues):.1%} of the "
                  f"images, not clearly more than always answering the largest class would ({largest:.1%}; one-sided "
                  "binomial test, p >= 0.05): they have not learnt the classes, so the flags below are mostly their "
                  "own errors. Train longer or on more data before acting on them.", ""]
    per_class = issues.groupby("label").agg(images=("label", "size"), flagged=("label_issue", "sum"),
                                            estimated=("label_issue_estimated", "sum"))
    cut = per_class[per_class["estimated"] > per_class["flagged"]]
    if len(cut):
        lines += ["**Note:** cleanlab estimated that more than half of a class is mislabelled, which means the "
                  "held-out models cannot tell (confident learning assumes most of a class is labelled right); "
                  "this search flags at most half of a class, the lowest label quality, outliers included: "
                  + "; ".join(f"{md(label)} ({row.flagged} of {row.images} images flagged, cleanlab estimated "
                              f"{row.estimated})" for label, row in cut.iterrows()) + ".", ""]
    if source.get("faces_not_scored"):
        lines += [f"**Note:** outliers were ranked by {OUTLIERS_BY_PROBABILITIES}, which sees only how the classifier "
                  "read an image, not what it shows (it finds few non-faces), because BlazeFace could not score the "
                  f"images: {md(source['faces_not_scored'])}.", ""]
    if source.get("failed_runs"):
        lines += [f"**Note:** runs of this configuration that failed were left out: {md(', '.join(source['failed_runs']))}.", ""]
    if source.get("val_images_in_fewer_repeats"):
        lines += [f"**Note:** {source['val_images_in_fewer_repeats']} validation images were predicted in fewer than "
                  f"{repeats} repeats (a run failed or wrote no predictions, or the repeats held out different "
                  "images): their average rests on fewer models (column `folds`).", ""]
    if source["runs_without_val_predictions"]:
        lines += [f"**Note:** runs without validation predictions were left out: "
                  f"{md(', '.join(source['runs_without_val_predictions']))}.", ""]
    lines += ["| rank | image | split | given | suggested | label quality | outlier score | why |",
              "|---|---|---|---|---|---|---|---|"]
    for rank, row in enumerate(flagged.head(shown).itertuples(), start=1):
        lines.append(f"| {rank} | {md(Path(row.path).name)} | {row.split} | {md(row.label)} | {md(row.suggested_label)} "
                     f"| {row.label_quality:.3f} | {row.outlier_score:.3f} | {row.why} |")
    if len(flagged) > shown:
        lines.append(f"\n{len(flagged) - shown} more in label_issues.csv.")
    return "\n".join(lines) + "\n"


def gallery_of_suspects(issues: pd.DataFrame, path: Path, top: int = 24, roots: list[str] = ()) -> int:
    """The ``top`` suspects drawn with their given and suggested labels. Paths come from the sweep's CSVs,
    which anyone may have written, so only image files inside ``roots`` are read (``images.path_problem``):
    folders the caller vouches for (the sweep's own ``data.root`` and cache, or ``--data-root``), never folders
    named by the sweep's files. The others, and files that cannot be read (moved, not images), are left out of
    the picture and counted in its title."""
    import torch
    from PIL import Image

    from maskdet.data.images import load_rgb
    from maskdet.evaluation.explain import gallery

    rows, images = [], []
    flagged = issues[issues["why"] != ""].head(top)
    inside = _vouched(roots)
    for row in flagged.itertuples():
        if not _inside(row.path, inside):
            continue
        try:
            image = load_rgb(row.path).resize((96, 96), Image.Resampling.BILINEAR)
        except Exception:  # noqa: BLE001 - a listed file that is gone or unreadable: counted, not fatal
            continue
        images.append(torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1).float() / 255)
        rows.append({"label": f"{row.label} (given)", "prediction": row.suggested_label,
                     "confidence": 1 - row.label_quality})
    unread = len(flagged) - len(rows)
    title = (f"Top {len(rows)} label-issue suspects: given label, suggested label and 1 - label quality"
             + (f" ({unread} listed files outside the given data folders, or unreadable)" if unread else ""))
    import matplotlib.pyplot as plt

    plt.close(gallery(torch.stack(images) if images else torch.zeros(0, 3, 96, 96), pd.DataFrame(rows), title, path))
    return len(images)


def write_label_issues(sweep_dir: str | Path, out: str | Path | None = None, outlier_share: float = 0.01,
                       top: int = 24, image_roots: Sequence[str] = ()) -> dict:
    """Find, rank and write (module docstring); returns the counts and where the files are. The outlier score
    and the gallery read images only inside ``image_roots`` (``face_probabilities``, ``gallery_of_suspects``)."""
    if isinstance(outlier_share, bool) or not isinstance(outlier_share, int | float) or not 0 <= outlier_share < 0.5:
        raise DataError(f"outlier_share={outlier_share!r} must be a share from 0 (no outliers flagged) to below 0.5.")
    frame, class_names, source = held_out_predictions(sweep_dir)
    face_scores = None
    if outlier_share > 0:
        face_scores, why_not = face_probabilities(list(frame["path"]), list(image_roots))
        source["outlier_method"] = OUTLIERS_BY_FACE if face_scores is not None else OUTLIERS_BY_PROBABILITIES
        source["faces_not_scored"] = why_not
        if why_not:
            log.warning("label issues: outliers ranked from the probabilities, because BlazeFace could not score "
                        "the images: %s", why_not)
    issues = find_issues(frame, class_names, outlier_share, face_scores)
    folder = Path(out) if out is not None else Path(sweep_dir)
    folder.mkdir(parents=True, exist_ok=True)
    columns = ["path", "label", "suggested_label", "label_quality", "outlier_score", "why", "split", "folds",
               *[c for c in DEMOGRAPHIC_COLUMNS if c in issues.columns]]
    flagged = issues[issues["why"] != ""]
    write_csv(flagged[columns], folder / "label_issues.csv")
    write_csv(issues[[*columns, "label_issue", "outlier"]], folder / "label_quality.csv")
    write_text(folder / "label_issues.md", format_markdown(issues, source, outlier_share))
    drawn = gallery_of_suspects(issues, folder / "label_issues.png", top, list(image_roots))
    summary = {"images": len(issues), "gallery_images": drawn, "label_issues": int(issues["label_issue"].sum()),
               "outliers": int(issues["outlier"].sum()), "flagged": int(len(flagged)), "folder": str(folder), **source}
    log.info("label issues: %d likely label errors and %d outliers among %d held-out images (%s)",
             summary["label_issues"], summary["outliers"], summary["images"], folder / "label_issues.md")
    return summary
