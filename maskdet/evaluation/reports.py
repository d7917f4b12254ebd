"""The files a finished test leaves in its run folder: predictions, report, confusion matrix, metrics."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # reports are written to files, never shown
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from sklearn.metrics import classification_report, confusion_matrix  # noqa: E402

from maskdet import runfolder  # noqa: E402
from maskdet.data.demographics import DEMOGRAPHIC_COLUMNS  # noqa: E402
from maskdet.finite import require_finite  # noqa: E402
from maskdet.jsonfile import write_json  # noqa: E402
from maskdet.writing import plot_text, save_figure, write_csv, write_text  # noqa: E402

# What the test was run on (maskdet.evaluation.holdout.tested_on), written beside predictions.csv by the
# test and copied into metrics.json by write_metrics, where compare and the cv summary read it.
TESTED_ON = runfolder.TESTED_ON.name


def predictions_frame(index: pd.DataFrame, rows: np.ndarray, probs: np.ndarray, class_names: Sequence[str]) -> pd.DataFrame:
    """One row per test image: path, label, prediction, confidence, one probability column per class, demographics."""
    require_finite(probs, "The test predictions")
    from maskdet.inference import prediction_columns

    part = index.loc[rows]
    frame = pd.DataFrame({"path": part["path"].to_numpy(), "label": part["label_name"].to_numpy(),
                          **prediction_columns(probs, class_names)})
    for column in DEMOGRAPHIC_COLUMNS:
        frame[column] = part[column].to_numpy()
    return frame


def classification_report_text(predictions: pd.DataFrame, class_names: Sequence[str]) -> str:
    """Per-class precision, recall, F1 and support with 4 digits, as printed in the COMP6721 study."""
    return classification_report(predictions["label"], predictions["prediction"], labels=list(class_names),
                                 digits=4, zero_division=0)


def save_confusion_matrix(predictions: pd.DataFrame, class_names: Sequence[str], folder: Path) -> np.ndarray:
    """Write ``confusion_matrix.csv`` (counts; rows: true class, columns: predicted) and
    ``confusion_matrix.png`` (counts, and each row as fractions of its true class); return the counts."""
    names = list(class_names)
    matrix = confusion_matrix(predictions["label"], predictions["prediction"], labels=names)
    write_csv(pd.DataFrame(matrix, index=pd.Index(names, name="true"), columns=names), folder / "confusion_matrix.csv", index=True)
    fig = confusion_matrix_figure(matrix, names)
    save_figure(fig, folder / "confusion_matrix.png", dpi=120)
    plt.close(fig)
    return matrix


def confusion_matrix_figure(matrix: np.ndarray, names: Sequence[str]) -> plt.Figure:
    """Counts beside the row-normalised matrix (recall on the diagonal). Drawn here rather than with
    sklearn's ConfusionMatrixDisplay because sklearn turns a class with no test images into a row of
    zeros; here that row stays empty and reads "no images"."""
    totals = matrix.sum(1, keepdims=True)
    fractions = np.divide(matrix, totals, out=np.full(matrix.shape, np.nan), where=totals > 0)
    n = len(names)
    fig, axes = plt.subplots(1, 2, sharey=True, layout="constrained", figsize=(2 * (0.75 * n + 1) + 2, 0.75 * n + 2.2))
    panels = ((matrix, matrix.max(initial=0) or 1, "counts", lambda v: f"{v:d}"),
              (fractions, 1.0, "row-normalised: fraction of each true class", lambda v: "no images" if np.isnan(v) else f"{v:.2f}"))
    for ax, (values, top, title, text) in zip(axes, panels):
        ax.imshow(values, cmap="Reds", vmin=0, vmax=top)
        for (i, j), value in np.ndenumerate(values):
            ax.text(j, i, text(value), ha="center", va="center", fontsize=9,
                    color="white" if value > top / 2 else "black")
        ax.set_xticks(range(n), [plot_text(c) for c in names], rotation=45, ha="right", fontsize=9)
        ax.set_yticks(range(n), [plot_text(c) for c in names], fontsize=9)
        ax.set_xlabel("predicted class")
        ax.set_title(title, fontsize=10)
    axes[0].set_ylabel("true class")
    fig.suptitle(f"Confusion matrix, test split ({int(matrix.sum())} images)", fontsize=11)
    return fig


def write_test_reports(predictions: pd.DataFrame, class_names: Sequence[str], folder: str | Path) -> str:
    """Write predictions.csv, classification_report.txt and the confusion matrix; return the report text."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    write_csv(predictions, folder / "predictions.csv")
    report = classification_report_text(predictions, class_names)
    write_text(folder / "classification_report.txt", report)
    save_confusion_matrix(predictions, class_names, folder)
    return report


def write_metrics(metrics: dict, folder: str | Path) -> Path:
    """metrics.json, with the record of what the run was tested on (``tested_on``) when its metrics come
    from a test in this folder: a comparison then pools and pairs only runs tested alike. A run that was
    not tested (no test metrics) gets no record, so an older tested_on.json is never taken for its own."""
    record = Path(folder) / TESTED_ON
    if metrics.get("test") and "tested_on" not in metrics and record.is_file():
        metrics = {**metrics, "tested_on": json.loads(record.read_text())}
    return write_json(Path(folder) / "metrics.json", metrics)
