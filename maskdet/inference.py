"""Batched inference on image files with a checkpoint's own preprocessing (no Hydra here).

Files are decoded and resized exactly as the decoded cache does (``load_resized``: PIL, antialiased
bilinear), in a thread pool, so a prediction equals what ``evaluate`` gives for the same image.
Files that cannot be used are returned with their reason, decided by the same check as the dataset
readers (``images.path_problem``); they never stop the run. A folder given as input is treated like
``data.root``: links leading out of it are refused. A file or glob named explicitly is read as named.
"""

from __future__ import annotations

import glob
from collections.abc import Collection, Iterable, Sequence
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


def predict_files(model, files: Sequence[Path], batch_size: int = 64, workers: int | None = None,
                  progress: Iterable | None = None) -> tuple[pd.DataFrame, list[dict]]:
    """Predictions (path, prediction, confidence, prob_<class>) for ``files`` and the unreadable ones."""
    names = list(model.hparams.class_names)
    size = int(model.hparams.image_size)
    device = next(model.parameters()).device
    rows, skipped = [], []
    batches = [files[i:i + batch_size] for i in range(0, len(files), batch_size)]
    model.eval()
    with ThreadPoolExecutor(workers) as pool, torch.inference_mode():
        for batch in (progress(batches) if progress else batches):
            loaded = list(pool.map(lambda p: _load(p, size), batch))
            good = [(p, a) for p, a in zip(batch, loaded) if not isinstance(a, str)]
            skipped += [skip(p, a) for p, a in zip(batch, loaded) if isinstance(a, str)]
            if not good:
                continue
            images = to_float(torch.from_numpy(np.stack([a for _, a in good])).to(device))
            probs = model(images).float().softmax(1).cpu().numpy()
            require_finite(probs, f"The checkpoint's probabilities for {good[0][0]} and the rest of its batch")
            for (path, _), p in zip(good, probs):
                rows.append({"path": str(path), "prediction": names[int(p.argmax())], "confidence": float(p.max()),
                             **{f"prob_{n}": float(v) for n, v in zip(names, p)}})
    columns = ["path", "prediction", "confidence", *[f"prob_{n}" for n in names]]
    return pd.DataFrame(rows, columns=columns), skipped


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
        probs.append(model(x).float().softmax(1).cpu())
    probs = torch.cat(probs)
    require_finite(probs, f"The model's probabilities on the {split} split")
    return torch.cat(images), torch.cat(labels), torch.cat(rows), probs
