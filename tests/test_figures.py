"""Every figure maskdet draws keeps its titles (and the suptitle) inside the canvas: a title cut off at the
edge of the PNG is a figure a researcher cannot use. Each figure is drawn from real inputs (a real model,
predictions with the columns maskdet writes) and its text boxes are measured after rendering."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: E402

from maskdet.evaluation import explain  # noqa: E402
from maskdet.evaluation.bias import audit, plot  # noqa: E402
from maskdet.evaluation.reports import confusion_matrix_figure  # noqa: E402
from maskdet.models import MaskClassifier  # noqa: E402

CLASSES = ["without_mask", "with_surgical_mask", "with_cloth_mask", "with_ffp2_mask"]


def _titles_outside(fig) -> list[str]:
    canvas = FigureCanvasAgg(fig)  # the figures come back closed, without a canvas of their own
    canvas.draw()
    renderer = canvas.get_renderer()
    width, height = fig.bbox.width, fig.bbox.height
    texts = [fig._suptitle] if fig._suptitle is not None else []
    for ax in fig.axes:
        texts += [ax.title, ax._left_title, ax._right_title, ax.xaxis.label, ax.yaxis.label]
    outside = []
    for text in texts:
        if not text.get_text() or not text.get_visible():
            continue
        box = text.get_window_extent(renderer)
        if box.x0 < -0.5 or box.y0 < -0.5 or box.x1 > width + 0.5 or box.y1 > height + 0.5:
            outside.append(f"{text.get_text()!r} at {box}")
    return outside


def _predictions(n: int = 400, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    label = rng.choice(CLASSES, n)
    correct = rng.random(n) < 0.8
    prediction = np.where(correct, label, rng.choice(CLASSES, n))
    return pd.DataFrame({"path": [f"/d/{i}.png" for i in range(n)], "label": label, "prediction": prediction,
                         "confidence": rng.uniform(0.3, 1.0, n), "gender": rng.choice(["female", "male"], n),
                         "race": rng.choice(["white", "black", "asian", "indian", "others"], n),
                         "age": rng.integers(1, 90, n), "age_group": rng.choice(["0-17", "18-39", "40-64", "65+"], n)})


@pytest.fixture(scope="module")
def model() -> MaskClassifier:
    torch.manual_seed(0)
    return MaskClassifier("custom_cnn", num_classes=4, class_names=CLASSES, image_size=32).eval()


def test_reliability_diagram(tmp_path):
    fig = explain.reliability_diagram(_predictions(), tmp_path / "reliability.png")
    assert _titles_outside(fig) == []


def test_confusion_matrix_with_long_class_names():
    fig = confusion_matrix_figure(np.arange(16).reshape(4, 4), CLASSES)
    assert _titles_outside(fig) == []


def test_bias_figure(tmp_path):
    report = audit(_predictions(), CLASSES, n_bootstrap=20)
    fig = plot(report, tmp_path / "bias.png")
    assert _titles_outside(fig) == []


def test_explanation_figures(model, tmp_path):
    images = torch.rand(16, 3, 32, 32)
    labels = torch.arange(16) % 4
    predicted = torch.tensor([0, 1, 2, 3, 1, 2, 3, 0, 0, 1, 2, 3, 0, 1, 2, 3])
    layer = explain.find_target_layer(model, 32)
    figures = {
        "gradcam": explain.gradcam_grid(model, layer, images, labels, predicted, CLASSES, 1, tmp_path / "g.png"),
        "gallery": explain.gallery(images[:8], _predictions(8), "Low-confidence test images (confidence < 0.6)",
                                   tmp_path / "gal.png"),
        "filters": explain.first_layer_filters(model, tmp_path / "f.png"),
        "histograms": explain.weight_histograms(model, tmp_path / "w.png"),
    }
    for name, fig in figures.items():
        assert fig is not None and _titles_outside(fig) == [], name


def test_names_from_files_that_look_like_mathtext_do_not_break_figures(tmp_path):
    """Class and group names come from folder names and CSV cells: ``$\\frac$`` is a malformed formula that
    would make matplotlib fail the whole figure; it is drawn as the text it is."""
    import numpy as np

    from maskdet.evaluation.reports import confusion_matrix_figure
    from maskdet.evaluation.robustness import plot_groups
    from maskdet.writing import save_figure

    names = ["$\\frac$", "with$mask"]
    save_figure(confusion_matrix_figure(np.array([[3, 1], [0, 4]]), names), tmp_path / "cm.png")
    labels = [t.get_text() for t in confusion_matrix_figure(np.array([[3, 1], [0, 4]]), names).axes[0].get_xticklabels()]
    assert labels == ["\\$\\frac\\$", "with\\$mask"]
    rows = [{"attribute": "race", "group": g, "corruption": c, "severity": s, "n": 5, "accuracy": 0.5}
            for g in names for c, s in (("clean", 0), ("blur", 1))]
    plot_groups({"rows": rows, "corruptions": ["blur"], "severities": [1]}, tmp_path / "groups.png")
    assert (tmp_path / "cm.png").stat().st_size > 5000 and (tmp_path / "groups.png").stat().st_size > 5000
