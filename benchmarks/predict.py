"""predict's throughput vs a per-image loop (open, transform, forward one by one), in one run.

    python benchmarks/predict.py
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import torch
from PIL import Image
from torchvision import transforms as T

from maskdet.data.synthetic import generate, make_spec
from maskdet.inference import predict_files
from maskdet.models import MaskClassifier


def per_image(model: MaskClassifier, files: list[Path]) -> float:
    size = model.hparams.image_size
    transform = T.Compose([T.Resize((size, size)), T.ToTensor()])
    start = time.perf_counter()
    with torch.inference_mode():
        for path in files:
            model(transform(Image.open(path).convert("RGB"))[None]).softmax(1)
    return len(files) / (time.perf_counter() - start)


def batched(model: MaskClassifier, files: list[Path]) -> float:
    start = time.perf_counter()
    predict_files(model, files, batch_size=64)
    return len(files) / (time.perf_counter() - start)


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="maskdet-predict-bench-"))
    files = sorted(generate(make_spec(per_class=250, seed=21, size=128), work / "faces").rglob("*.jpg"))
    print(f"\n{'model':<32}{'per-image loop':>16}{'maskdet.predict':>18}{'ratio':>8}")
    for architecture, size in (("custom_cnn", 32), ("resnet18", 224)):
        model = MaskClassifier(architecture, num_classes=4, image_size=size).eval()
        subset = files if architecture == "custom_cnn" else files[:300]
        per_image(model, subset[:20]), batched(model, subset[:64])  # warm-up
        slow, fast = per_image(model, subset), batched(model, subset)
        print(f"{architecture + f' at {size} px':<32}{slow:>12,.0f} img/s{fast:>14,.0f} img/s{fast / slow:>7.1f}x")


if __name__ == "__main__":
    main()
