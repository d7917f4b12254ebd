"""The LightningDataModule: a thin adapter from ``maskdet.data.prepare`` (settings -> index with splits)
to batches.

``prepare_data`` does the disk work once (generating the embedded dataset, decoding the cache);
``setup`` runs ``prepare`` and builds per-split uint8 tensors. Batches are gathered by index from those
tensors (one tensor gather per batch, no per-image Python, no worker processes), moved to the device as
uint8, and turned into floats, augmented (training only) in ``on_after_batch_transfer``. Normalisation
belongs to the model, so a checkpoint carries its own preprocessing.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import lightning as L
import numpy as np
import pandas as pd
import torch
from torch.utils.data import (
    BatchSampler,
    DataLoader,
    Dataset,
    DistributedSampler,
    RandomSampler,
    SequentialSampler,
    WeightedRandomSampler,
)

from maskdet.data import cache
from maskdet.data.augment import to_float
from maskdet.data.images import load_resized
from maskdet.data.prepare import PreparedData, build_caches, prepare
from maskdet.data.settings import DataSettings
from maskdet.errors import ConfigError

log = logging.getLogger(__name__)


class CachedSplit(Dataset):
    """One split's decoded images (or backbone features); ``dataset[list_of_positions]`` is a whole batch.

    ``images`` is the split copied into a tensor, or, for a split above the memory budget, a
    ``cache.RowReader`` over the cache file with ``cache_rows`` (the split's rows in it): the same batches
    either way, so the same sampler order gives the same result.
    """

    def __init__(self, images: torch.Tensor | cache.RowReader, labels: torch.Tensor, rows: torch.Tensor,
                 key: str = "image", cache_rows: np.ndarray | None = None):
        self.images, self.labels, self.rows, self.key, self.cache_rows = images, labels, rows, key, cache_rows

    @property
    def in_memory(self) -> bool:
        return isinstance(self.images, torch.Tensor)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, positions: list[int]) -> dict[str, torch.Tensor]:
        if not self.in_memory:
            idx = torch.as_tensor(positions)
            data = torch.from_numpy(self.images.read(self.cache_rows[np.asarray(positions, dtype=np.int64)]))
            return {self.key: data, "label": self.labels[idx], "row": self.rows[idx]}
        idx = torch.as_tensor(positions, device=self.images.device)
        return {self.key: self.images[idx], "label": self.labels[idx], "row": self.rows[idx]}

    def move_to(self, device: torch.device) -> CachedSplit:
        self.images, self.labels, self.rows = (t.to(device) for t in (self.images, self.labels, self.rows))
        return self


class EpochBatchSampler(BatchSampler):
    """A BatchSampler that passes Lightning's ``set_epoch`` on to a distributed sampler inside it."""

    def set_epoch(self, epoch: int) -> None:
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(epoch)


class StreamingSplit(Dataset):
    """Decode per item with PIL, for datasets whose decoded cache would not fit on disk or in memory."""

    def __init__(self, paths: Sequence[str], labels: torch.Tensor, rows: torch.Tensor, image_size: int):
        self.paths, self.labels, self.rows, self.image_size = list(paths), labels, rows, image_size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        image = torch.from_numpy(load_resized(self.paths[i], self.image_size).transpose(2, 0, 1).copy())
        return {"image": image, "label": self.labels[i], "row": self.rows[i]}


class MaskDataModule(L.LightningDataModule):
    """Batches for Lightning from ``DataSettings``: ``prepare_data`` does the disk work once, ``setup``
    runs ``maskdet.data.prepare.prepare`` and wraps each split; the loaders only sample positions."""

    def __init__(self, settings: DataSettings):
        super().__init__()
        self.settings = settings
        self.data: PreparedData | None = None
        self._splits: dict[str, Dataset] = {}
        self._image_splits: dict[str, Dataset] = {}

    def prepare_data(self) -> None:
        """Disk work, once: generate the embedded dataset and decode the cache if missing. Nothing to do once
        this process has run ``setup`` (``prepare`` builds what is missing, under the caches' file locks), so
        a ``trainer.fit`` after ``setup`` does not list and open the dataset again."""
        if self.data is None:
            build_caches(self.settings)

    def setup(self, stage: str | None = None) -> None:
        """Prepare the data once; on every call, place in-memory splits on the trainer's GPU when they fit."""
        if self.data is None:
            self.data = prepare(self.settings)
            self._splits = {name: self._make_split(name, self.data.decoded.images) for name in ("train", "val", "test")}
            self._image_splits = dict(self._splits)  # kept when features replace images (explanations need pixels)
        device = self.trainer.strategy.root_device if self.trainer is not None else torch.device("cpu")
        if device.type == "cuda":
            for dataset in self._splits.values():
                if isinstance(dataset, CachedSplit) and dataset.in_memory and _fits_on_gpu(dataset, device):
                    dataset.move_to(device)  # once; batches are then gathered on the GPU

    def _prepared(self) -> PreparedData:
        if self.data is None:
            raise RuntimeError("MaskDataModule.setup() has not run yet: call it before reading the prepared data.")
        return self.data

    @property
    def index(self) -> pd.DataFrame:
        return self._prepared().index

    @property
    def class_names(self) -> list[str]:
        return self._prepared().class_names

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def _make_split(self, name: str, arrays: np.ndarray | None, key: str = "image") -> Dataset:
        part = self.data.used[self.data.used["split"] == name]
        labels = torch.tensor(part["label"].to_numpy(), dtype=torch.long)
        rows = torch.tensor(part.index.to_numpy(), dtype=torch.long)
        if arrays is None:
            return StreamingSplit(part["path"], labels, rows, self.settings.image_size)
        reader = cache.RowReader(arrays)
        if len(part) * reader.row_bytes > cache.memory_budget(self.settings.cache_memory_gb):
            log.info("%s split (%.2f GB) is above data.cache_memory_gb: batches are read from %s", name,
                     len(part) * reader.row_bytes / 2**30, reader.path)
            return CachedSplit(reader, labels, rows, key, cache_rows=part["cache_row"].to_numpy())
        # one copy in RAM, read in file order (a memmap gather then a reorder held the split twice)
        return CachedSplit(torch.from_numpy(reader.read(part["cache_row"].to_numpy())), labels, rows, key)

    def use_backbone_features(self, extract, key: str) -> None:
        """Serve cached backbone features (batch key ``"features"``) instead of images, for training a head
        on a frozen backbone without augmentation: one backbone pass over the dataset instead of one per epoch."""
        data = self._prepared()
        if not self.settings.serves_backbone_features:
            raise ConfigError("Backbone features can be cached only with data.feature_cache=true, "
                              "data.decoded_cache=true and data.augment=null.")
        features = cache.load_or_build_features(data.decoded, key, extract, self.settings.eval_batch_size)
        self._splits = {name: self._make_split(name, features, "features") for name in ("train", "val", "test")}

    # ------------------------------------------------------------ dataloaders
    def _loader(self, name: str, train: bool) -> DataLoader:
        dataset, settings = self._splits[name], self.settings
        batch_size = settings.batch_size if train else settings.eval_batch_size
        world = self.trainer.world_size if self.trainer is not None else 1
        seed = settings.seed
        if isinstance(dataset, StreamingSplit):
            workers = settings.num_workers
            sampler = _shard(dataset, self.trainer.global_rank, world, train, seed) if world > 1 \
                else RandomSampler(dataset) if train else None
            return DataLoader(dataset, batch_size=batch_size, sampler=sampler, generator=_loader_generator(seed),
                              num_workers=workers, pin_memory=torch.cuda.is_available(), persistent_workers=workers > 0)
        if world > 1:
            sampler = _shard(dataset, self.trainer.global_rank, world, train, seed)
        elif train and settings.balance_by:
            sampler = WeightedRandomSampler(self._balance_weights(dataset), num_samples=len(dataset), replacement=True)
        else:
            sampler = RandomSampler(dataset) if train else SequentialSampler(dataset)
        return DataLoader(dataset, sampler=EpochBatchSampler(sampler, batch_size, drop_last=False), batch_size=None,
                          generator=_loader_generator(seed),
                          pin_memory=torch.cuda.is_available() and not (dataset.in_memory and dataset.images.is_cuda))

    def _balance_weights(self, dataset: CachedSplit) -> torch.Tensor:
        """Weights that make every (label x group) cell equally likely: 1 / size of the sample's cell."""
        part = self.index.loc[dataset.rows.numpy(), ["label", *self.settings.balance_by]]
        cell_size = part.groupby(list(part.columns), observed=True)["label"].transform("size")
        return torch.as_tensor(1.0 / cell_size.to_numpy(), dtype=torch.double)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", train=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", train=False)

    def image_dataloader(self, split: str = "test") -> DataLoader:
        """Batches of images (never cached features) of one split, in order, for explanations."""
        dataset = self._image_splits[split]
        batch_size = self.settings.eval_batch_size
        if isinstance(dataset, StreamingSplit):
            return DataLoader(dataset, batch_size=batch_size, num_workers=self.settings.num_workers)
        return DataLoader(dataset, sampler=EpochBatchSampler(SequentialSampler(dataset), batch_size, False),
                          batch_size=None)

    def on_after_batch_transfer(self, batch: dict, dataloader_idx: int) -> dict:
        """uint8 -> float in [0, 1] on the device; augment training batches only."""
        if "image" not in batch:  # cached backbone features
            return batch
        images = to_float(batch["image"])
        augment = self.settings.augment
        if augment is not None and self.trainer is not None and self.trainer.training:
            images = augment(images)
        return {**batch, "image": images}


def _shard(dataset: Dataset, rank: int, world: int, train: bool, seed: int):
    """This process's part of a split under DDP (maskdet shards itself: trainer.use_distributed_sampler=false).
    Training shards pad to equal length (DDP needs the same number of steps everywhere); evaluation shards
    do not, so synchronised metrics equal a single-process evaluation."""
    if train:
        return DistributedSampler(dataset, world, rank, shuffle=True, seed=seed)
    return list(range(rank, len(dataset), world))


def _loader_generator(seed: int) -> torch.Generator:
    """A DataLoader's own generator for its worker base seed. Without one, each ``iter(loader)`` draws from
    the global random stream, and Lightning creates the first iterator of a resumed run at another moment
    than in an uninterrupted one, so the shuffles and augmentations after a resume would differ. Shuffling
    itself still draws from the global stream, which checkpoints save and restore (MaskClassifier)."""
    return torch.Generator().manual_seed(seed)


def _fits_on_gpu(dataset: CachedSplit, device: torch.device, share: float = 0.3) -> bool:
    """A split goes to the GPU when its tensors take at most ``share`` of the free memory."""
    free, _ = torch.cuda.mem_get_info(device)
    return dataset.images.device == device or dataset.images.nbytes <= share * free
