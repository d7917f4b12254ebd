"""Explanations: Grad-CAM is faithful (looks where the evidence is), pictures for every architecture."""

import sys

import pytest
import torch
from torch import nn

from maskdet.errors import ConfigError
from maskdet.evaluation.explain import GradCAM, find_target_layer
from maskdet.models import MaskClassifier
from tests.conftest import REPO, cli_env
from tests.helpers import commands


def _region_dataset(n: int, generator: torch.Generator):
    """32x32 noise; the class is decided only by the colour of a patch in the top-left 12x12 corner."""
    images = torch.rand(n, 3, 32, 32, generator=generator) * 0.6
    labels = torch.randint(0, 2, (n,), generator=generator)
    patch = torch.zeros(n, 3, 1, 1)
    patch[labels == 0, 0] = 1.0  # red
    patch[labels == 1, 2] = 1.0  # blue
    images[:, :, 2:10, 2:10] = patch.expand(n, 3, 8, 8)
    return images, labels


@pytest.fixture(scope="module")
def region_model():
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    model = MaskClassifier("custom_cnn", num_classes=2, image_size=32)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.train()
    for _ in range(60):
        images, labels = _region_dataset(32, generator)
        loss = nn.functional.cross_entropy(model(images), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    images, labels = _region_dataset(64, generator)
    with torch.no_grad():
        assert (model(images).argmax(1) == labels).float().mean() > 0.95
    return model, images, labels


def test_gradcam_mass_falls_on_the_region_that_decides_the_class(region_model):
    model, images, labels = region_model
    layer = find_target_layer(model, 32)
    assert layer == "net.conv_layer"
    heat, _ = GradCAM(model, layer)(images.clone(), labels)
    inside = torch.zeros(32, 32, dtype=torch.bool)
    inside[0:12, 0:12] = True  # the patch plus a margin of the 8x8 map's cell size (4 px)
    share = heat[:, inside].sum(1) / heat.flatten(1).sum(1).clamp_min(1e-12)
    assert share.mean() >= 0.6, share.mean()
    assert inside.float().mean() < 0.15  # the region is a small part of the image


def test_gradcam_changes_with_the_target_class(region_model):
    model, images, labels = region_model
    layer = find_target_layer(model, 32)
    for_truth, _ = GradCAM(model, layer)(images[:8].clone(), labels[:8])
    for_other, _ = GradCAM(model, layer)(images[:8].clone(), 1 - labels[:8])
    assert (for_truth - for_other).abs().mean() > 0.05


@pytest.mark.parametrize("architecture, layer", [("resnet18", "net.layer4"), ("mobilenet_v2", "net.features"),
                                                 ("efficientnet_b0", "net.features")])
def test_target_layer_is_the_last_convolutional_block(architecture, layer):
    model = MaskClassifier(architecture, num_classes=2).eval()
    assert find_target_layer(model, 64) == layer
    heat, logits = GradCAM(model, layer)(torch.rand(2, 3, 64, 64))
    assert heat.shape == (2, 64, 64) and heat.max() <= 1.0 and logits.shape == (2, 2)


def test_models_without_convolutions_and_wrong_layer_names_are_explained():
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 2))
    with pytest.raises(ConfigError, match="no convolutional layer"):
        find_target_layer(mlp, 8)
    with pytest.raises(ConfigError, match=r"'net.layer9' is not a layer.*similar names"):
        find_target_layer(MaskClassifier("resnet18", num_classes=2), 64, "net.layer9")


def test_weight_histograms_and_filters_are_labelled(tmp_path):
    from maskdet.evaluation.explain import first_layer_filters, weight_histograms

    model = nn.Sequential(nn.Conv2d(3, 8, 5), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 4 * 4, 2))
    fig = weight_histograms(model, tmp_path / "weight_histograms.png")
    shown = [ax for ax in fig.axes if ax.axison]
    assert [ax.get_title() for ax in shown] == ["0 (600 weights)", "3 (256 weights)"]
    assert all(ax.get_xlabel() == "weight value" and ax.get_ylabel() == "count" for ax in shown)
    fig = first_layer_filters(model, tmp_path / "first_layer_filters.png")
    title = fig.get_suptitle()
    assert "8 filters of 5x5" in title and "(0)" in title and "((" not in title


@pytest.mark.slow
def test_training_run_writes_explanations_and_logs_them_to_tensorboard(tiny_dataset, cache_dir, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from maskdet.train import train
    from tests.conftest import compose_train

    train(compose_train(["data=folder", f"data.root={tiny_dataset}", "data.num_folds=3", "trainer.max_epochs=1"],
                        tmp_path, cache_dir))
    for name in ("gradcam", "misclassified", "low_confidence", "reliability", "first_layer_filters",
                 "feature_maps", "weight_histograms"):
        assert (tmp_path / "explain" / f"{name}.png").stat().st_size > 1000, name
    events = EventAccumulator(str(tmp_path / "tensorboard"), size_guidance={"images": 0, "histograms": 0}).Reload()
    images = set(events.Tags()["images"])
    assert {"explain/gradcam", "explain/misclassified", "confusion_matrix", "bias"} <= images
    from maskdet.evaluation.holdout import TENSORBOARD_WIDTH

    assert max(events.Images(tag)[-1].width for tag in images) == TENSORBOARD_WIDTH  # wide figures scaled to fit
    assert any(tag.startswith("weights/net.conv_layer") for tag in events.Tags()["histograms"])


@pytest.mark.slow
def test_explain_command_for_a_torchvision_checkpoint(tiny_dataset, cache_dir, tmp_path):
    env = cli_env(cache_dir, tmp_path)
    result = commands.run([sys.executable, "-m", "maskdet.train", "data=folder", f"data.root={tiny_dataset}",
                             "data.num_folds=3", "model=mobilenet_v2", "model.weights=null", "data.image_size=64",
                             "trainer.max_epochs=1", "task_name=mnv2", "~logger", "callbacks.explanations=null"],
                            cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    (ckpt,) = (tmp_path / "outputs" / "mnv2" / "runs").glob("*/checkpoints/last.ckpt")
    assert not (ckpt.parent.parent / "explain").exists()  # switched off by config
    result = commands.run([sys.executable, "-m", "maskdet.explain", f"ckpt_path={ckpt}", "explain.per_class=50",
                             "task_name=ex"], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    (run,) = (tmp_path / "outputs" / "ex" / "runs").iterdir()
    assert (run / "gradcam.png").is_file() and (run / "feature_maps.png").is_file()
    assert "fewer test images" in (run / "notes.txt").read_text()  # 50 per class asked, 9 there
    result = commands.run([sys.executable, "-m", "maskdet.explain", f"ckpt_path={ckpt}",
                             "explain.target_layer=net.nothing", "task_name=ex2"],
                            cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 1 and "explain.target_layer='net.nothing' is not a layer" in result.stderr


def _execute(notebook: str, parameter: str, cwd):
    nbformat = pytest.importorskip("nbformat")
    from nbclient import NotebookClient

    nb = nbformat.read(REPO / "notebooks" / notebook, as_version=4)
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), "commit notebooks without outputs"
    name = nb.cells[0].source.split("=")[0].strip()
    if parameter is not None:  # None: run the notebook as shipped
        nb.cells[0].source = f"{name} = {parameter!r}"
    NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(cwd)}}).execute()
    return nb


@pytest.mark.slow
def test_notebooks_run_top_to_bottom_on_a_fresh_run(tiny_dataset, cache_dir, tmp_path):
    from maskdet.train import train
    from tests.conftest import compose_train

    train(compose_train(["data=folder", f"data.root={tiny_dataset}", "data.num_folds=3", "trainer.max_epochs=1", "~logger"],
                        tmp_path / "run", cache_dir))
    tour = _execute("dataset_tour.ipynb", str(tiny_dataset), tmp_path)
    text = "".join(o.get("text", "") for c in tour.cells for o in c.get("outputs", []))
    assert "120 images in 4 classes" in text
    assert any("image/png" in o.get("data", {}) for c in tour.cells for o in c.get("outputs", []))
    report = _execute("run_report.ipynb", str(tmp_path / "run"), tmp_path)
    outputs = [o for c in report.cells for o in c.get("outputs", [])]
    assert sum("image/png" in o.get("data", {}) for o in outputs) >= 6  # confusion, bias, gradcam, galleries...
    assert not any("is missing" in o.get("text", "") for o in outputs)


@pytest.mark.slow
def test_the_run_report_notebook_as_shipped_opens_the_latest_run_or_a_sweep(tiny_dataset, cache_dir, tmp_path):
    from maskdet.compare import main as compare
    from maskdet.evaluation.cv import write_summary
    from maskdet.train import train
    from tests.conftest import compose_train

    sweep = tmp_path / "outputs" / "train" / "multiruns" / "s"
    for fold in (0, 1):
        train(compose_train(["data=folder", f"data.root={tiny_dataset}", "data.num_folds=3", f"data.fold={fold}",
                             "trainer.max_epochs=1", "~logger", "callbacks.explanations=null"],
                            sweep / str(fold), cache_dir))
    write_summary(sweep)
    compare([str(sweep)])
    tour = _execute("dataset_tour.ipynb", None, tmp_path)  # DATA_ROOT = "embedded": a small embedded sample
    assert "200 images in 4 classes" in "".join(o.get("text", "") for c in tour.cells for o in c.get("outputs", []))
    shipped = _execute("run_report.ipynb", None, tmp_path)  # RUN_DIR = "latest": the sweep, newest under ./outputs
    text = "".join(o.get("text", "") for c in shipped.cells for o in c.get("outputs", []))
    markdown = "".join(o.get("data", {}).get("text/markdown", "") for c in shipped.cells for o in c.get("outputs", []))
    assert "sweep outputs/train/multiruns/s" in text and "fold" in markdown
