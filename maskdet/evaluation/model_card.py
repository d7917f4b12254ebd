"""A model card from a training run folder: what the model is, what it saw, how well, for whom."""

from __future__ import annotations

import html
import json
import re
from pathlib import Path

import pandas as pd

from maskdet import runfolder
from maskdet.evaluation.statistics import wilson_interval
from maskdet.models.backbones import WEIGHT_FILE_SUFFIXES
from maskdet.writing import md

_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


def _read(path: Path):
    if not path.is_file():
        return None
    return json.loads(path.read_text()) if path.suffix == ".json" else path.read_text()


def _embedded(markdown: str) -> str:
    """The run's bias report inside the card: its tables kept, but HTML escaped and no control characters (the
    file may have been edited by anyone who had the run folder)."""
    lines = markdown.replace("# Bias report", "").strip().splitlines()
    return "\n".join(html.escape(_CONTROL.sub(" ", line), quote=False) for line in lines)


def _initialisation(weights: str | None) -> str:
    """Where training started, in words (``model.weights``: null, a pretrained weights name, or a file)."""
    if weights is None:
        return "trained from random initialisation (no pretrained weights)"
    if Path(weights).suffix in WEIGHT_FILE_SUFFIXES or Path(weights).exists():
        return f"weights initialised from the file `{md(weights)}`"
    return f"weights initialised from the pretrained weights `{md(weights)}` of its backbone family"


def model_card(model, ckpt_path: Path, sidecar: dict) -> str:
    run = ckpt_path.resolve().parent.parent
    data = _read(run / runfolder.DATA_REPORT) or {}
    metrics = _read(run / runfolder.METRICS) or {} if runfolder.state(run) == "finished" else {}
    bias = _read(run / "bias_report.md") if metrics else None  # a report beside failed.json is no result
    hp = model.hparams
    lines = [f"# Model card: {md(hp.architecture)} face-mask classifier", "",
             "## Model", "",
             f"- Architecture: `{md(hp.architecture)}` ({sum(p.numel() for p in model.parameters()):,} parameters), "
             f"{_initialisation(hp.weights)}, backbone freeze: `{md(hp.freeze)}`.",
             f"- Input: RGB face crop resized to {hp.image_size}x{hp.image_size} (PIL bilinear), values in [0, 1]; "
             f"normalisation (mean {list(hp.mean)}, std {list(hp.std)}) is part of the model.",
             f"- Output: probabilities over {len(hp.class_names)} classes: {', '.join(md(c) for c in hp.class_names)}.",
             f"- Checkpoint: `{md(ckpt_path)}`; ONNX parity on {sidecar['parity']['images']} test images: "
             f"max probability difference {sidecar['parity']['max_abs_diff']:.1e}, same predicted class for all.", ""]
    lines += ["## Training data", ""]
    trained_on = getattr(model, "trained_on", None) or {}
    if trained_on:
        lines.append(f"- Recorded in the checkpoint: layout `{md(trained_on.get('source'))}`, "
                     f"{md(trained_on.get('images'))} images"
                     + (" (**maskdet's embedded drawn faces: a demonstration model**)." if trained_on.get("synthetic") is True
                        else "."))
    if data:
        lines.append(f"- Source: `{md(data.get('source'))}` at `{md(data.get('root'))}`; {md(data.get('num_images'))} images used.")
        split_class = data.get("counts", {}).get("split_class", {})
        splits = [s for s in ("train", "val", "test") if s in split_class]
        lines += ["", "| class | " + " | ".join(splits) + " |", "|---" * (1 + len(splits)) + "|"]
        for name in data.get("classes", []):
            lines.append(f"| {md(name)} | " + " | ".join(md(split_class[s].get(name, 0)) for s in splits) + " |")
        for group, counts in data.get("groups", {}).items():
            lines.append(f"\n- {md(group)}: " + ", ".join(f"{md(k)} {md(v)}" for k, v in counts.items()))
        if data.get("skipped"):
            lines.append(f"- {len(data['skipped'])} files were skipped (see data_report.json).")
    else:
        lines.append("- The training run's data_report.json was not found next to the checkpoint.")
    lines += ["", "## Performance (test split)", ""]
    predictions = run / runfolder.PREDICTIONS
    if metrics.get("test") and predictions.is_file():
        frame = pd.read_csv(predictions)
        correct = int((frame["label"] == frame["prediction"]).sum())
        low, high = wilson_interval(correct, len(frame))
        lines.append(f"- Accuracy {correct / len(frame):.4f} [95 % Wilson {low:.4f}, {high:.4f}] on {len(frame)} images; "
                     f"macro-F1 {metrics['test'].get('test/f1', float('nan')):.4f}.")
    else:
        lines.append("- No test metrics were found in the training run folder.")
    lines += ["", "## Bias audit", "", _embedded(bias) if bias else "No bias report found.", ""]
    synthetic = data.get("source") == "synthetic"
    lines += ["## Intended use and limitations", "",
              "- Classifies a single, already cropped face: it does not detect faces. Crops that are not faces "
              "get a confident but meaningless answer.",
              "- Research on mask classification and its demographic bias; not for decisions about people.",
              "- Demographic groups come from file-name annotations (UTKFace style): estimated, coarse "
              "(binary gender, five race groups) and missing for some images.",
              "- Accuracy and the bias metrics hold for data like the test split; other cameras, "
              "populations and mask types may differ."]
    if synthetic:
        lines.append("- **Trained on maskdet's procedurally drawn synthetic faces**: a demonstration model. "
                     "It has not seen a real face and must not be used on real photographs.")
    return "\n".join(lines) + "\n"
