"""Using a trained model: predict on folders, ONNX export with verified parity, model card."""

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch
from hydra import compose, initialize_config_dir
from PIL import Image

from tests.conftest import CONF, REPO, cli_env, compose_train


def _train(dataset, cache_dir, out, *overrides):
    from maskdet.train import train

    metrics = train(compose_train(["data=folder", f"data.root={dataset}", "data.num_folds=3", "~logger",
                                   "callbacks.explanations=null", *overrides], out, cache_dir))
    return metrics["best_checkpoint"]


@pytest.fixture
def cnn_ckpt(tiny_run):
    return str(tiny_run / "checkpoints" / "best.ckpt")


def _compose(name, overrides):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name=name, overrides=overrides)


@pytest.mark.slow
def test_predict_a_folder_with_good_and_bad_files(cnn_ckpt, tiny_dataset, cache_dir, tmp_path):
    folder = tmp_path / "inbox"
    (folder / "nested").mkdir(parents=True)
    sources = sorted(tiny_dataset.rglob("*.jpg"))[:5]
    for i, src in enumerate(sources):
        (folder / f"ok{i}.jpg").write_bytes(src.read_bytes())
    Image.open(sources[0]).convert("L").resize((300, 200)).save(folder / "nested" / "gray_big.png")
    (folder / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "readme.txt").write_text("hello")
    result = subprocess.run([sys.executable, "-X", "importtime", "-m", "maskdet.predict", f"ckpt_path={cnn_ckpt}",
                             f"input={folder}", "annotate=true"], cwd=REPO, env=cli_env(cache_dir, tmp_path),
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    imported = {line.rsplit("|", 1)[-1].strip() for line in result.stderr.splitlines() if line.startswith("import time:")}
    heavy = {"lightning", "torchvision", "torchmetrics", "matplotlib", "scipy"}
    assert not imported & heavy, f"predict imported {sorted(imported & heavy)}: it loads the network alone"
    (run,) = (tmp_path / "outputs" / "predict" / "runs").iterdir()
    predictions = pd.read_csv(run / "predictions.csv")
    assert len(predictions) == 6 and predictions["path"].str.endswith("gray_big.png").any()
    probs = predictions.filter(like="prob_")
    assert probs.shape[1] == 4 and np.allclose(probs.sum(1), 1, atol=1e-5)
    skipped = pd.read_csv(run / "skipped.csv").set_index("path")["reason"]
    assert "empty file" in skipped[str(folder / "empty.jpg")]
    assert "not an image file" in skipped[str(folder / "readme.txt")]
    assert str(folder / "broken.jpg") in skipped.index
    assert len(list((run / "annotated").glob("*.jpg"))) == 6


@pytest.mark.slow
def test_a_prediction_equals_what_evaluate_gives(cnn_ckpt):
    from pathlib import Path

    from maskdet.checkpoints import load_classifier
    from maskdet.inference import predict_files

    run = Path(cnn_ckpt).parent.parent
    evaluated = pd.read_csv(run / "predictions.csv")  # the training run's test, through the decoded cache
    network = load_classifier(cnn_ckpt, lightning=False)  # what predict loads: no Lightning
    predicted, skipped = predict_files(network, [Path(p) for p in evaluated["path"]], batch_size=7)
    assert skipped == []
    size = network.hparams.image_size
    images = torch.rand(5, 3, size, size)
    with torch.no_grad():  # the same weights, preprocessing and temperature as the LightningModule
        assert torch.equal(network(images), load_classifier(cnn_ckpt).eval()(images))
    assert (predicted["prediction"].to_numpy() == evaluated["prediction"].to_numpy()).all()
    columns = [c for c in evaluated.columns if c.startswith("prob_")]
    assert np.abs(predicted[columns].to_numpy() - evaluated[columns].to_numpy()).max() < 1e-5


def _export(ckpt, out, cache_dir):
    from maskdet.export import export

    return export(_compose("export", [f"ckpt_path={ckpt}", f"paths.output_dir={out}", f"paths.cache_dir={cache_dir}"]))


@pytest.mark.slow
@pytest.mark.parametrize("model", ["custom_cnn", "resnet18"])
def test_export_matches_pytorch_on_real_test_images(model, tiny_dataset, cache_dir, tmp_path, cnn_ckpt):
    pytest.importorskip("onnxruntime")
    import onnxruntime

    ckpt = cnn_ckpt if model == "custom_cnn" else _train(
        tiny_dataset, cache_dir, tmp_path / "train", "model=resnet18", "model.weights=null", "data.image_size=64",
        "trainer.max_epochs=1")
    sidecar = _export(ckpt, tmp_path / "export", cache_dir)
    out = tmp_path / "export"
    assert sidecar["parity"]["max_abs_diff"] < 1e-4 and sidecar["parity"]["same_prediction"] == 36
    saved = json.loads((out / "model.json").read_text())
    size = 32 if model == "custom_cnn" else 64
    assert saved["image_size"] == size and saved["class_names"][0] == "without_mask" and len(saved["mean"]) == 3
    session = onnxruntime.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    for batch in (1, 5):  # the batch axis is dynamic
        probs = session.run(None, {"images": np.random.rand(batch, 3, size, size).astype(np.float32)})[0]
        assert probs.shape == (batch, 4) and np.allclose(probs.sum(1), 1, atol=1e-5)
    card = (out / "model_card.md").read_text()
    for section in ("## Model", "## Training data", "## Performance (test split)", "## Bias audit",
                    "## Intended use and limitations", "does not detect faces"):
        assert section in card
    assert "95 % Wilson" in card and "without_mask" in card


def test_export_without_the_extra_says_how_to_install(monkeypatch):
    from maskdet.export import ExportError, _require_onnx

    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # as if the package were not installed
    with pytest.raises(ExportError, match=r"pip install -e '.\[export\]'"):
        _require_onnx()


def test_parity_failure_is_loud(tmp_path, monkeypatch):
    pytest.importorskip("onnxruntime")
    import torch

    from maskdet.export import ExportError, check_parity, export_onnx
    from maskdet.models import MaskClassifier

    model = MaskClassifier("custom_cnn", num_classes=4).eval()
    export_onnx(model, tmp_path / "m.onnx", 32)
    with torch.no_grad():
        model.net.fc_layer[6].bias[0] += 5.0  # the PyTorch model no longer matches the exported one
    with pytest.raises(ExportError, match="ONNX parity failed"):
        check_parity(model, tmp_path / "m.onnx", torch.rand(8, 3, 32, 32), 1e-4)


def test_model_card_names_how_the_weights_started(tmp_path):
    import torch

    from maskdet.evaluation.model_card import model_card
    from maskdet.models import MaskClassifier

    sidecar = {"parity": {"images": 8, "max_abs_diff": 1e-7}}
    ckpt = tmp_path / "run" / "checkpoints" / "best.ckpt"  # a run folder with no reports: the card says so
    model = MaskClassifier("custom_cnn", num_classes=4, image_size=32)
    card = model_card(model, ckpt, sidecar)
    assert "trained from random initialisation (no pretrained weights)" in card
    assert "`None`" not in card and "No test metrics were found" in card
    torch.save(model.net.state_dict(), tmp_path / "start.pth")
    started = MaskClassifier("custom_cnn", num_classes=4, image_size=32, weights=str(tmp_path / "start.pth"))
    assert f"weights initialised from the file `{tmp_path / 'start.pth'}`" in model_card(started, ckpt, sidecar)
