"""Batched inference on image files with a checkpoint's own preprocessing (no Hydra here).

Files are decoded and resized exactly as the decoded cache does (``load_resized``: PIL, antialiased
bilinear), in a thread pool, so a prediction equals what ``evaluate`` gives for the same image.
Files that cannot be used are returned with their reason, decided by the same check as the dataset
readers (``images.path_problem``); they never stop the run. A folder given as input is treated like
``data.root``: links leading out of it are refused. A file or glob named explicitly is read as named.
"""

from __future__ import annotations

import glob
from collections.abc import Collection, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import ImageDraw

from maskdet.data.augment import to_float
from maskdet.data.images import (
    IMAGE_EXTENSIONS,
    BadImageError,
    list_image_files,
    load_resized,
    load_rgb,
    path_problem,
    skip,
)
from maskdet.errors import ConfigError
from maskdet.finite import require_finite
from maskdet.progress import progress

# On the CPU a forward pass gets at most this many input pixels (4 crops at 224 px): measured here
# (benchmarks/detect.py), MobileNetV2 classifies 12 faces in 99 ms in batches of 4, in 187 ms in one batch of 12
# (its activations no longer fit the CPU caches) and in 169 ms one by one. At 32 px this allows 196 crops.
CPU_BATCH_PIXELS = 4 * 224 * 224


def probabilities(model, images: torch.Tensor) -> torch.Tensor:
    """The one way from a model to class probabilities: float images in [0, 1] (NCHW, on the model's device)
    -> the softmax of its calibrated logits, float32 on the CPU. Used by every prediction: files, splits, face
    crops, the test reports."""
    return model(images).float().softmax(1).cpu()


def prediction_schema(class_names: Sequence[str]) -> list[str]:
    """The columns every table of predictions has (after its own: path, label, box ...)."""
    return ["prediction", "confidence", *[f"prob_{n}" for n in class_names]]


def prediction_columns(probs, class_names: Sequence[str]) -> dict[str, np.ndarray]:
    """``prediction_schema``'s columns for ``probs`` (N x classes): the most probable class, its probability,
    and every class's probability."""
    probs = np.asarray(probs)  # its float type kept: float32 probabilities are written as float32
    probs = (probs if np.issubdtype(probs.dtype, np.floating) else probs.astype(float)).reshape(-1, len(class_names))
    names = np.asarray(list(class_names), dtype=object)
    columns = {"prediction": names[probs.argmax(1)] if len(probs) else names[:0],
               "confidence": probs.max(1) if len(probs) else np.zeros(0)}
    return {**columns, **{f"prob_{n}": probs[:, i] for i, n in enumerate(class_names)}}


def classify_crops(model, crops: np.ndarray, batch_size: int = 64, what: str = "faces") -> np.ndarray:
    """Class probabilities (N x classes) for uint8 NHWC crops, ``batch_size`` crops per forward pass (fewer
    on the CPU for large crops, see CPU_BATCH_PIXELS)."""
    if not len(crops):
        return np.zeros((0, len(model.hparams.class_names)), np.float32)
    device = next(model.parameters()).device
    if device.type == "cpu":
        batch_size = min(batch_size, max(1, CPU_BATCH_PIXELS // crops.shape[1] ** 2))
    out = []
    with torch.inference_mode():
        for start in range(0, len(crops), batch_size):
            batch = to_float(torch.from_numpy(crops[start:start + batch_size]).to(device).permute(0, 3, 1, 2))
            out.append(probabilities(model, batch).numpy())
    probs = np.concatenate(out)
    require_finite(probs, f"class probabilities of {what}")
    return probs


def list_inputs(spec: str, extensions: Collection[str] = IMAGE_EXTENSIONS) -> tuple[list[Path], list[dict]]:
    """Files named by ``spec`` (a file, a folder searched recursively, or a glob) and the skipped ones;
    ``extensions``: the file types read (videos too for detect=true)."""
    path = Path(spec).expanduser()
    if path.is_dir():
        return list_image_files(path, path.resolve(), extensions)
    if path.exists() or path.is_symlink():
        candidates = [path]
    else:
        candidates = sorted(Path(p) for p in glob.glob(str(path), recursive=True))
        if not candidates:
            raise ConfigError(f"input={spec} matches no file: pass an image file, a folder or a glob such as 'faces/*.jpg'.")
    files, skipped = [], []
    for candidate in candidates:
        problem = path_problem(candidate, extensions=extensions)
        if problem == "a folder, not a file":
            problem = "a folder matched by the glob (a glob does not search inside folders; pass the folder itself)"
        if problem:
            skipped.append(skip(candidate, problem))
        else:
            files.append(candidate)
    return files, skipped


def _load(path: Path, size: int) -> np.ndarray | str:
    problem = path_problem(path)  # also for files passed in directly, not from list_inputs
    if problem:
        return problem
    try:
        return load_resized(path, size).transpose(2, 0, 1)
    except BadImageError as err:
        return str(err)


def predict_files(model, files: Sequence[Path], batch_size: int = 64,
                  workers: int | None = None) -> tuple[pd.DataFrame, list[dict]]:
    """Predictions (path, prediction, confidence, prob_<class>) for ``files`` and the unreadable ones, with
    progress on the console (``maskdet.progress``) for long inputs."""
    names = list(model.hparams.class_names)
    size = int(model.hparams.image_size)
    device = next(model.parameters()).device
    paths, probs, skipped = [], [], []
    batches = [files[i:i + batch_size] for i in range(0, len(files), batch_size)]
    model.eval()
    with ThreadPoolExecutor(workers) as pool, torch.inference_mode(), \
            progress(f"predicting {len(files):,} images", len(files), quiet=len(batches) < 2) as advance:
        for batch in batches:
            loaded = list(pool.map(lambda p: _load(p, size), batch))
            good = [(p, a) for p, a in zip(batch, loaded) if not isinstance(a, str)]
            skipped += [skip(p, a) for p, a in zip(batch, loaded) if isinstance(a, str)]
            advance(len(batch))
            if not good:
                continue
            images = to_float(torch.from_numpy(np.stack([a for _, a in good])).to(device))
            batch_probs = probabilities(model, images).numpy()
            require_finite(batch_probs, f"The checkpoint's probabilities for {good[0][0]} and the rest of its batch")
            paths += [str(p) for p, _ in good]
            probs.append(batch_probs)
    probs = np.concatenate(probs) if probs else np.zeros((0, len(names)))
    return pd.DataFrame({"path": paths, **prediction_columns(probs, names)}, columns=["path", *prediction_schema(names)]), \
        skipped


def annotate(predictions: pd.DataFrame, folder: Path) -> None:
    """Copies of the images with the predicted class and confidence written on them."""
    folder.mkdir(parents=True, exist_ok=True)
    for i, row in enumerate(predictions.itertuples(index=False)):
        img = load_rgb(row.path)  # upright, as it was classified
        draw = ImageDraw.Draw(img)
        text = f"{row.prediction} {row.confidence:.2f}"
        box = draw.textbbox((2, 2), text)
        draw.rectangle([0, 0, box[2] + 2, box[3] + 2], fill=(0, 0, 0))
        draw.text((2, 2), text, fill=(255, 255, 255))
        img.save(folder / f"{i:05d}_{Path(row.path).stem}.jpg", quality=90)


@torch.no_grad()
def predict_split(model: torch.nn.Module, datamodule, split: str = "test") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Images (float, [0, 1]), labels, index rows and probabilities of one split, on the model's device."""
    loader = datamodule.image_dataloader(split)
    device = next(model.parameters()).device
    images, labels, rows, probs = [], [], [], []
    for batch in loader:
        x = to_float(batch["image"].to(device))
        images.append(x.cpu())
        labels.append(batch["label"].cpu())  # batches are gathered on the GPU when the split lives there
        rows.append(batch["row"].cpu())
        probs.append(probabilities(model, x))
    probs = torch.cat(probs)
    require_finite(probs, f"The model's probabilities on the {split} split")
    return torch.cat(images), torch.cat(labels), torch.cat(rows), probs
