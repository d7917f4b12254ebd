"""Speed of maskdet's data path and training loop, as ratios against a per-item PIL loop in the same run.

    python benchmarks/run.py [--quick]

(a) training-batch throughput: warm decoded cache + on-device augmentation vs PIL + DataLoader
    (batch 32, 2 workers), at 32 px (the COMP6721 study: resize, normalise) and 224 px (the transfer-learning
    notebook: + flip, rotation, jitter);
(b) a frozen-ResNet18 cross-validation study (3 folds x 5 epochs, ~600 images, 224 px, augmentation off):
    maskdet (one backbone pass, cached features) vs the PIL loop (backbone every epoch), plus the
    ratio extrapolated to the COMP6721 study's full 10 folds x 20 epochs protocol from the measured per-pass costs;
(c) Lightning's loop vs a plain PyTorch loop over the same cached batches for the custom CNN.

Every figure is measured on one synthetic dataset generated at the start; nothing is downloaded.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
import warnings
from pathlib import Path

import lightning as L
import torch
import torchvision
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms as T

from maskdet.data.augment import BatchAugment
from maskdet.data.datamodule import MaskDataModule
from maskdet.data.settings import DataSettings
from maskdet.data.sources import read_class_folders
from maskdet.data.synthetic import generate, make_spec
from maskdet.models import MaskClassifier

CUSTOM_CNN_NORM = ([0.485, 0.456, 0.406], [0.225, 0.225, 0.225])  # the COMP6721 study's
IMAGENET_NORM = ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])


class PilDataset(Dataset):
    """The source studies' loader: open with PIL, transform per item."""

    def __init__(self, paths, labels, transform):
        self.paths, self.labels, self.transform = list(paths), list(labels), transform

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        return self.transform(Image.open(self.paths[i]).convert("RGB")), self.labels[i]


def pil_transform(size: int, augment: bool, norm) -> T.Compose:
    steps = [T.Resize((size, size))]
    if augment:
        steps += [T.RandomRotation(15), T.RandomHorizontalFlip(), T.ColorJitter(brightness=0.2, contrast=0.2)]
    return T.Compose(steps + [T.ToTensor(), T.Normalize(*norm)])


def datamodule(root: Path, cache: Path, size: int, **kw) -> MaskDataModule:
    dm = MaskDataModule(DataSettings(read_class_folders, root=str(root), cache_dir=str(cache), image_size=size, **kw))
    dm.prepare_data()
    dm.setup()
    return dm


def throughput_pil(dm: MaskDataModule, size: int, augment: bool, norm, seconds: float) -> float:
    train = dm.index[dm.index["split"] == "train"]
    loader = DataLoader(PilDataset(train["path"], train["label"], pil_transform(size, augment, norm)),
                        batch_size=32, shuffle=True, num_workers=2, persistent_workers=True)
    images, start, warm = 0, None, False
    while True:
        for x, _ in loader:
            if not warm:  # the first batches pay for starting the workers
                warm, start = True, time.perf_counter()
                continue
            images += len(x)
            if time.perf_counter() - start > seconds:
                return images / (time.perf_counter() - start)


def throughput_cache(dm: MaskDataModule, augment: bool, norm, seconds: float) -> float:
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in norm)
    aug = BatchAugment() if augment else None
    images, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        for batch in dm.train_dataloader():
            x = batch["image"].float().div_(255)
            x = aug(x) if aug is not None else x
            x = (x - mean) / std
            images += len(x)
    return images / (time.perf_counter() - start)


def pil_loop_cv(dm: MaskDataModule, folds: int, epochs: int, weights_path: Path) -> tuple[float, dict]:
    """The transfer-learning notebook's loop for each fold: PIL DataLoader, frozen ResNet18 forward every epoch, train the head."""
    passes = {"backbone_images": 0}
    start = time.perf_counter()
    transform = pil_transform(224, False, IMAGENET_NORM)
    index = dm.index
    for fold in range(folds):
        torch.manual_seed(fold)
        model = torchvision.models.resnet18()
        model.load_state_dict(torch.load(weights_path, weights_only=True))
        for p in model.parameters():
            p.requires_grad = False
        model.fc = nn.Linear(model.fc.in_features, dm.num_classes)
        optimizer = torch.optim.Adam(model.fc.parameters(), lr=1e-3)
        val = index[index["fold"] == fold]
        train = index[(index["split"] != "test") & (index["fold"] != fold)]
        test = index[index["split"] == "test"]

        def loader(part, shuffle):
            return DataLoader(PilDataset(part["path"], part["label"], transform), batch_size=32,
                              shuffle=shuffle, num_workers=2)

        for _ in range(epochs):
            model.train()
            for x, y in loader(train, True):
                loss = nn.functional.cross_entropy(model(x), y)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
            model.eval()
            with torch.no_grad():
                for x, _ in loader(val, False):
                    model(x)
            passes["backbone_images"] += len(train) + len(val)
        with torch.no_grad():
            for x, _ in loader(test, False):
                model(x)
        passes["backbone_images"] += len(test)
    return time.perf_counter() - start, passes


def maskdet_cv(root: Path, cache: Path, folds: int, epochs: int, weights_path: Path, num_folds: int) -> tuple[float, float]:
    """The same study through maskdet: the frozen backbone's features are computed once and reused.
    Returns (total seconds, seconds spent computing features)."""
    start, feature_s = time.perf_counter(), 0.0
    for fold in range(folds):
        L.seed_everything(fold)
        dm = datamodule(root, cache, 224, num_folds=num_folds, fold=fold)
        model = MaskClassifier("resnet18", dm.num_classes, dm.class_names, 224, weights=str(weights_path),
                               freeze="backbone", mean=IMAGENET_NORM[0], std=IMAGENET_NORM[1])
        t = time.perf_counter()
        dm.use_backbone_features(model.backbone_features, model.backbone_key())
        feature_s += time.perf_counter() - t
        trainer = L.Trainer(max_epochs=epochs, accelerator="cpu", logger=False, enable_checkpointing=False,
                            enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0)
        trainer.fit(model, datamodule=dm)
        trainer.test(model, datamodule=dm, verbose=False)
    return time.perf_counter() - start, feature_s


def loop_overhead(dm: MaskDataModule, epochs: int) -> tuple[float, float]:
    """Seconds per epoch: a plain PyTorch loop and Lightning's, same model, same cached batches, no validation."""
    def plain() -> float:
        torch.manual_seed(0)
        model = MaskClassifier("custom_cnn", dm.num_classes, image_size=32)
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
        model.train()
        start = time.perf_counter()
        for _ in range(epochs):
            for batch in dm.train_dataloader():
                loss = nn.functional.cross_entropy(model(batch["image"].float().div_(255)), batch["label"])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
        return (time.perf_counter() - start) / epochs

    def lightning() -> float:
        torch.manual_seed(0)
        model = MaskClassifier("custom_cnn", dm.num_classes, image_size=32)
        trainer = L.Trainer(max_epochs=epochs, accelerator="cpu", logger=False, enable_checkpointing=False,
                            enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                            num_sanity_val_steps=0)
        start = time.perf_counter()
        trainer.fit(model, datamodule=dm)
        return (time.perf_counter() - start) / epochs

    plain()  # warm-up: first-touch allocation and kernel selection
    return min(plain(), plain()), min(lightning(), lightning())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="shorter timings (a smoke test of this script)")
    args = parser.parse_args()
    logging.getLogger("lightning").setLevel(logging.ERROR)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    seconds = 3 if args.quick else 10
    work = Path(tempfile.mkdtemp(prefix="maskdet-bench-"))
    rows = []

    root = generate(make_spec(per_class=500, seed=11, size=128), work / "faces")  # 2000 images
    cache = work / "cache"
    for size, augment, norm in ((32, False, CUSTOM_CNN_NORM), (224, True, IMAGENET_NORM)):
        dm = datamodule(root, cache, size, batch_size=32, num_folds=10)
        pil = throughput_pil(dm, size, augment, norm, seconds)
        ours = throughput_cache(dm, augment, norm, seconds)
        what = "resize+normalise" if not augment else "resize+flip+rotate+jitter+normalise"
        rows.append((f"(a) batches/s as img/s, {size} px, {what}", f"{pil:,.0f} img/s", f"{ours:,.0f} img/s", ours / pil))

    torch.manual_seed(0)
    weights_path = work / "resnet18.pth"  # stands in for ImageNet weights: the same cost, no download
    torch.save(torchvision.models.resnet18().state_dict(), weights_path)
    cv_root = generate(make_spec(per_class=150, seed=12, size=128), work / "cv")  # 600 images
    folds, epochs = (3, 5) if not args.quick else (2, 2)
    dm = datamodule(cv_root, work / "cv-cache-pil", 224, num_folds=folds)
    pil_s, passes = pil_loop_cv(dm, folds, epochs, weights_path)
    ours_s, feature_s = maskdet_cv(cv_root, work / "cv-cache", folds, epochs, weights_path, folds)
    rows.append((f"(b) frozen ResNet18 CV, {folds} folds x {epochs} epochs, 600 img, 224 px",
                 f"{pil_s:,.1f} s", f"{ours_s:,.1f} s", pil_s / ours_s))
    # Extrapolation to the COMP6721 study's protocol (8605 images, 10 folds x 20 epochs, test per fold) from the
    # measured per-image costs: a PIL-loop backbone pass; maskdet's one feature pass; maskdet's head
    # training and evaluation per image-epoch (everything in its study that is not the feature pass).
    pool = int((dm.index["split"] != "test").sum())
    per_pass = pil_s / passes["backbone_images"]
    per_feature = feature_s / len(dm.index)
    per_head_epoch = (ours_s - feature_s) / (folds * epochs * pool)
    pil_full = per_pass * 10 * (20 * 6023 + 2582)
    ours_full = per_feature * 8605 + per_head_epoch * 10 * 20 * 6023
    rows.append(("(b') same, COMP6721's 10 folds x 20 epochs, 8605 img (EXTRAPOLATED)",
                 f"{pil_full / 3600:,.1f} h", f"{ours_full / 60:,.1f} min", pil_full / ours_full))

    dm = datamodule(root, cache, 32, batch_size=32, num_folds=10)
    plain_s, lightning_s = loop_overhead(dm, epochs=2 if args.quick else 3)
    rows.append(("(c) custom CNN epoch, plain PyTorch loop vs Lightning", f"{plain_s:.2f} s", f"{lightning_s:.2f} s",
                 plain_s / lightning_s))

    print(f"\n{'measurement':<66}{'baseline':>14}{'maskdet':>14}{'ratio':>9}")
    print("-" * 103)
    for name, base, ours, ratio in rows:
        print(f"{name:<66}{base:>14}{ours:>14}{ratio:>8.1f}x")
    print("\nratio = baseline time / maskdet time (higher is faster); (c) below 1.0 means Lightning is slower.")


if __name__ == "__main__":
    main()
