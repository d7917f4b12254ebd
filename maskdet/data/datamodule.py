"""The LightningDataModule: source -> index -> decoded cache -> splits -> subsets -> batches.

``prepare_data`` does the disk work once (generating the embedded dataset, decoding the cache);
``setup`` assigns splits and builds per-split uint8 tensors. Batches are gathered by index from those
tensors (one tensor gather per batch, no per-image Python, no worker processes), moved to the device as
uint8, and turned into floats, augmented (training only) in ``on_after_batch_transfer``. Normalisation
belongs to the model, so a checkpoint carries its own preprocessing.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

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

from maskdet.data import cache, sources
from maskdet.data import duplicates as dups
from maskdet.data.augment import to_float
from maskdet.data.demographics import DEFAULT_AGE_BINS, GROUP_COLUMNS, age_groups, normalise_group
from maskdet.data.images import load_resized
from maskdet.data.report import build_report
from maskdet.data.splits import assign_splits, cap_per_class, read_splits_file, select_subset, splits_table
from maskdet.data.synthetic import ensure_dataset, make_spec
from maskdet.errors import ConfigError, DataError

log = logging.getLogger(__name__)
SOURCES = ("synthetic", "folder", "roboflow", "manifest")


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
    """Face-mask images from any supported layout, split per the contract in docs/architecture.md."""

    def __init__(
        self,
        source: str = "synthetic",
        root: str | None = None,
        manifest: str | None = None,
        synthetic: Mapping | None = None,
        image_size: int = 32,
        batch_size: int = 32,
        eval_batch_size: int | None = None,
        test_size: float = 0.3,
        num_folds: int = 10,
        fold: int = 0,
        seed: int = 0,
        label_map: str | Mapping[str, str] | None = None,
        subset: Mapping[str, object] | None = None,
        cap_per_class: int | None = None,
        balance_by: Sequence[str] | None = None,
        age_bins: Sequence[int] = DEFAULT_AGE_BINS,
        augment: torch.nn.Module | None = None,
        decoded_cache: bool = True,
        feature_cache: bool = True,
        num_workers: int = 2,
        cache_dir: str = ".cache/maskdet",
        cache_memory_gb: float | None = None,
        duplicates: str = "group",
        group_by: str | Mapping | None = None,
        splits_file: str | None = None,
    ):
        super().__init__()
        # Every setting is checked here, before any file is read or written (maskdet.preflight builds
        # the datamodule first for exactly this), so a wrong value never costs a cache build.
        if source not in SOURCES:
            raise ConfigError(f"data.source={source!r} is unknown: use one of {', '.join(SOURCES)}.")

        def whole(key: str, value, least: int, advice: str = "") -> None:
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise ConfigError(f"data.{key}={value!r} must be a whole number of at least {least}{advice}.")

        whole("image_size", image_size, 8, " (pixels)")
        whole("batch_size", batch_size, 1)
        if eval_batch_size is not None:
            whole("eval_batch_size", eval_batch_size, 1, ", or null for max(batch_size, 256)")
        if cap_per_class is not None:
            whole("cap_per_class", cap_per_class, 1, " (images per class in each split); use data.cap_per_class=null "
                  "for no cap")
        whole("num_folds", num_folds, 2)
        whole("num_workers", num_workers, 0)
        if not 0 <= fold < num_folds:
            raise ConfigError(f"data.fold={fold} is out of range for data.num_folds={num_folds} (0..{num_folds - 1}).")
        if not 0 < test_size < 1:
            raise ConfigError(f"data.test_size={test_size} must be a fraction between 0 and 1 (e.g. 0.3).")
        groups = GROUP_COLUMNS
        balance_by = [balance_by] if isinstance(balance_by, str) else list(balance_by or [])
        unknown = [str(c) for c in balance_by if c not in groups]
        if unknown:
            raise ConfigError(f"data.balance_by: {', '.join(unknown)} is not a demographic column: balance training "
                              f"batches over any of {', '.join(groups)} (e.g. data.balance_by=[gender]), or [] for none.")
        for attribute, wanted in dict(subset or {}).items():
            if attribute not in (*groups, "label_name"):
                raise ConfigError(f"data.subset.{attribute}: no such column; use one of {', '.join(groups)}, label_name.")
            for value in [wanted] if isinstance(wanted, str | int) or wanted is None else list(wanted):
                try:
                    normalise_group(attribute, value)
                except ValueError as err:
                    raise ConfigError(f"data.subset.{attribute}: {err}") from None
        if not (label_map is None or label_map in ("none", "binary") or isinstance(label_map, Mapping)):
            raise ConfigError(f"data.label_map={label_map!r} is unknown: use null, binary or a mapping {{old_class: new_class}}.")
        edges = list(age_bins)
        if len(edges) < 2 or any(not isinstance(b, int | float) or isinstance(b, bool) for b in edges) \
                or any(b <= a for a, b in zip(edges, edges[1:])):
            raise ConfigError(f"data.age_bins={edges} must be at least two increasing ages, e.g. [0, 13, 20, 40, 60, 120].")
        self.source, self.root, self.manifest = source, root, manifest
        self.synthetic = dict(synthetic or {})
        self.image_size, self.batch_size = int(image_size), int(batch_size)
        self.eval_batch_size = int(eval_batch_size or max(batch_size, 256))
        self.test_size, self.num_folds, self.fold, self.seed = float(test_size), int(num_folds), int(fold), int(seed)
        self.label_map, self.subset, self.cap = label_map, dict(subset or {}), cap_per_class
        self.balance_by = balance_by
        self.age_bins, self.augment = list(age_bins), augment
        self.feature_cache = feature_cache
        self.decoded_cache, self.num_workers, self.cache_dir = decoded_cache, int(num_workers), Path(cache_dir)
        if cache_memory_gb is not None and (isinstance(cache_memory_gb, bool) or not cache_memory_gb >= 0):
            raise ConfigError(f"data.cache_memory_gb={cache_memory_gb!r} must be a size in GB (0: always read "
                              "batches from the cache file), or null for half the memory available.")
        self.cache_memory_gb = cache_memory_gb
        if duplicates not in dups.POLICIES:
            raise ConfigError(f"data.duplicates={duplicates!r} is unknown: use group (copies stay in one split), drop "
                              "(keep one copy) or keep (no grouping; warns when copies cross splits).")
        self.duplicates, self.group_rule = duplicates, dups.parse_group_by(group_by)
        self.group_by_name = self.group_rule[0] if self.group_rule else None
        self.splits_file = splits_file
        self.leakage: dict = {}
        self.index: pd.DataFrame | None = None
        self.skipped: list[dict] = []
        self.class_names: list[str] = []
        self._splits: dict[str, Dataset] = {}

    # ------------------------------------------------------------------ index
    def _scan(self) -> sources.Scan:
        if self.source == "synthetic":
            root = ensure_dataset(make_spec(**self.synthetic), self.cache_dir)
            return sources.read_class_folders(root)
        if self.source == "folder":
            return sources.read_class_folders(self.root)
        if self.source == "roboflow":
            return sources.read_roboflow(self.root)
        return sources.read_manifest(self.root, self.manifest)

    @property
    def dataset_root(self) -> str | None:
        if self.source == "synthetic":
            return str(self.cache_dir / "synthetic" / make_spec(**self.synthetic).key())
        return self.root

    def prepare_data(self) -> None:
        """Disk work, once: generate the embedded dataset and decode the cache if missing."""
        scan = self._scan()
        if self.decoded_cache and len(scan.index):
            cache.load_or_build(scan.index["path"], self.image_size, self.cache_dir)

    def setup(self, stage: str | None = None) -> None:
        """index -> duplicates and groups -> splits -> subsets -> per-split tensors (each step a plain
        function of maskdet.data.duplicates / splits, testable without Lightning)."""
        if self.index is not None:
            return
        index, skipped, decoded = self._usable_index()
        index, dropped, removed = self._duplicates_and_groups(index)
        index["split"], index["fold"] = self._assign_splits(index)
        self.leakage = dups.summarise(index, dropped, self.duplicates, self.group_by_name, self._unnamed)
        _warn_about_leaks(self.leakage, self.duplicates)
        selected = select_subset(index, self.subset)
        if self.cap:
            selected &= cap_per_class(index[selected], self.cap, self.seed).reindex(index.index, fill_value=False)
        index["selected"] = selected
        train = index[index["selected"] & (index["split"] == "train")]
        if train.empty:
            raise DataError(f"The training split is empty after data.subset={self.subset} and "
                            f"data.cap_per_class={self.cap}: loosen the subset; no run trains on zero images.")
        self.index, self.skipped = index, skipped + removed
        self._decoded = decoded
        self._splits = {name: self._make_split(name, decoded.images) for name in ("train", "val", "test")}
        self._image_splits = dict(self._splits)  # kept when features replace images (explanations need pixels)

    def _usable_index(self) -> tuple[pd.DataFrame, list[dict], cache.DecodedImages]:
        """Scan the source, decode (or validate) every file, refuse the unusable ones, number the classes."""
        scan = self._scan()
        index = sources.apply_label_map(sources.fill_unknown(scan.index), self.label_map)
        skipped = list(scan.skipped)
        decoded = cache.load_or_build(index["path"], self.image_size, self.cache_dir) if self.decoded_cache \
            else cache.validate(index["path"])
        index = index.assign(cache_row=np.arange(len(index)), error=decoded.errors.values, digest=decoded.digests.values)
        index, refused = _drop_unusable(index)
        skipped += refused
        if index.empty:
            raise DataError(f"No usable images found under {self.dataset_root}; see the skipped files listed above.")
        self.class_names = sources.class_order(index["label_name"].unique())
        if len(self.class_names) < 2:
            raise DataError(f"Only one class ({self.class_names[0]}) has usable images in {self.dataset_root}; "
                            "a classifier needs at least two.")
        index["label"] = index["label_name"].map({n: i for i, n in enumerate(self.class_names)}).astype(int)
        index["age_group"] = age_groups(index["age"], self.age_bins)
        return index.reset_index(drop=True), skipped, decoded

    def _duplicates_and_groups(self, index: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame, list[dict]]:
        """Find copies (data.duplicates), drop them under ``drop``, and give every image its ``split_group``:
        copies (unless ``keep``) and data.group_by's groups, merged. Returns (index, dropped rows, skipped)."""
        hashes, thumbs = dups.load_or_compute(index["path"], index["digest"], self.cache_dir)
        index = dups.find_duplicates(index, hashes, thumbs)
        dropped, removed = index.iloc[:0], []
        if self.duplicates == "drop":
            index, dropped, removed = dups.drop_copies(index)
            index = index.reset_index(drop=True)
        if "group" in index.columns and self.group_by_name != "manifest":
            log.warning("the manifest has a 'group' column but data.group_by is %s: its groups are not used; pass "
                        "data.group_by=manifest to keep each group inside one split", self.group_by_name)
        keys = dups.group_keys(index, self.group_rule)
        self._unnamed = int((keys == "").sum()) if self.group_rule else 0
        if self._unnamed:
            log.warning("%d of %d images have no group under data.group_by=%s (their names do not match); each is "
                        "a group of its own", self._unnamed, len(index), self.group_by_name)
        index["split_group"] = dups.split_groups(index, keys, with_duplicates=self.duplicates != "keep")
        return index, dropped, removed

    def _assign_splits(self, index: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        """The split and fold of every image: read from data.splits_file, fixed by the source, or assigned
        (grouped when images share a split_group)."""
        if self.splits_file:
            log.info("reusing the split of %s", self.splits_file)
            return read_splits_file(self.splits_file, index, self.dataset_root, self.fold)
        if "split" in index.columns and index["split"].notna().all():
            log.info("keeping the splits fixed by the %s source", self.source)
            return index["split"].to_numpy(), np.full(len(index), -1)
        return assign_splits(index["label"].to_numpy(), self.test_size, self.num_folds, self.fold, self.seed,
                             self.class_names, groups=index["split_group"].to_numpy())

    def _make_split(self, name: str, arrays: np.ndarray | None, key: str = "image") -> Dataset:
        part = self.index[self.index["selected"] & (self.index["split"] == name)]
        labels = torch.tensor(part["label"].to_numpy(), dtype=torch.long)
        rows = torch.tensor(part.index.to_numpy(), dtype=torch.long)
        if arrays is None:
            return StreamingSplit(part["path"], labels, rows, self.image_size)
        reader = cache.RowReader(arrays)
        if len(part) * reader.row_bytes > cache.memory_budget(self.cache_memory_gb):
            log.info("%s split (%.2f GB) is above data.cache_memory_gb: batches are read from %s", name,
                     len(part) * reader.row_bytes / 2**30, reader.path)
            return CachedSplit(reader, labels, rows, key, cache_rows=part["cache_row"].to_numpy())
        # one copy in RAM, read in file order (a memmap gather then a reorder held the split twice)
        return CachedSplit(torch.from_numpy(reader.read(part["cache_row"].to_numpy())), labels, rows, key)

    def use_backbone_features(self, extract, key: str) -> None:
        """Serve cached backbone features (batch key ``"features"``) instead of images, for training a head
        on a frozen backbone without augmentation: one backbone pass over the dataset instead of one per epoch."""
        self.setup()
        if not self.decoded_cache or self.augment is not None:
            raise ConfigError("Backbone features can be cached only with data.decoded_cache=true and data.augment=null.")
        features = cache.load_or_build_features(self._decoded, key, extract, self.eval_batch_size)
        self._splits = {name: self._make_split(name, features, "features") for name in ("train", "val", "test")}

    def report(self) -> dict:
        """The data report (counts per split x class x group, duplicates and groups, skipped files)."""
        self.setup()
        return build_report(self.index, self.skipped, self.class_names, self.source, self.dataset_root, self.leakage)

    def splits_table(self) -> pd.DataFrame:
        """The rows of ``splits.csv``: the split of every image, reusable with data.splits_file."""
        self.setup()
        return splits_table(self.index, self.dataset_root)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    # ------------------------------------------------------------ dataloaders
    def _loader(self, name: str, train: bool) -> DataLoader:
        dataset = self._splits[name]
        batch_size = self.batch_size if train else self.eval_batch_size
        world = self.trainer.world_size if self.trainer is not None else 1
        if isinstance(dataset, StreamingSplit):
            workers = self.num_workers
            shard = DistributedSampler(dataset, world, self.trainer.global_rank, shuffle=train, seed=self.seed) \
                if world > 1 else None  # maskdet shards itself (trainer.use_distributed_sampler=false)
            sampler = shard or (RandomSampler(dataset) if train else None)
            return DataLoader(dataset, batch_size=batch_size, sampler=sampler, generator=_loader_generator(self.seed),
                              num_workers=workers, pin_memory=torch.cuda.is_available(), persistent_workers=workers > 0)
        device = self.trainer.strategy.root_device if self.trainer is not None else torch.device("cpu")
        if device.type == "cuda" and dataset.in_memory and _fits_on_gpu(dataset, device):
            dataset.move_to(device)  # once; batches are then gathered on the GPU
        if world > 1:
            rank = self.trainer.global_rank
            # Training shards pad to equal length (DDP needs the same number of steps everywhere);
            # evaluation shards do not, so synchronised metrics equal a single-process evaluation.
            sampler = DistributedSampler(dataset, world, rank, shuffle=True, seed=self.seed) if train \
                else list(range(rank, len(dataset), world))
        elif train and self.balance_by:
            sampler = WeightedRandomSampler(self._balance_weights(dataset), num_samples=len(dataset), replacement=True)
        else:
            sampler = RandomSampler(dataset) if train else SequentialSampler(dataset)
        return DataLoader(dataset, sampler=EpochBatchSampler(sampler, batch_size, drop_last=False), batch_size=None,
                          generator=_loader_generator(self.seed),
                          pin_memory=torch.cuda.is_available() and not (dataset.in_memory and dataset.images.is_cuda))

    def _balance_weights(self, dataset: CachedSplit) -> torch.Tensor:
        """Weights that make every (label x group) cell equally likely: 1 / size of the sample's cell."""
        part = self.index.loc[dataset.rows.numpy(), ["label", *self.balance_by]]
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
        if isinstance(dataset, StreamingSplit):
            return DataLoader(dataset, batch_size=self.eval_batch_size, num_workers=self.num_workers)
        return DataLoader(dataset, sampler=EpochBatchSampler(SequentialSampler(dataset), self.eval_batch_size, False),
                          batch_size=None)

    def on_after_batch_transfer(self, batch: dict, dataloader_idx: int) -> dict:
        """uint8 -> float in [0, 1] on the device; augment training batches only."""
        if "image" not in batch:  # cached backbone features
            return batch
        images = to_float(batch["image"])
        if self.augment is not None and self.trainer is not None and self.trainer.training:
            images = self.augment(images)
        return {**batch, "image": images}


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


def _warn_about_leaks(leakage: dict, policy: str) -> None:
    """Say when copies or groups cross splits: under ``keep`` by choice, otherwise because the split was
    fixed by the source or a splits file, which maskdet does not change."""
    crossing = leakage["duplicates"]["groups_crossing_splits"]
    if crossing and policy == "keep":
        log.warning("data.duplicates=keep: %d of %d duplicate groups cross splits (train/val/test or folds), so test "
                    "images have copies in training and the test accuracy can be inflated; data.duplicates=group "
                    "keeps each group inside one split", crossing, leakage["duplicates"]["groups"])
    groups = leakage["split_groups"]["groups_crossing_splits"]
    if groups:
        log.warning("%d groups of images (copies or data.group_by) cross the splits fixed by the source or "
                    "data.splits_file, which maskdet does not change; see data_report.json", groups)


def _drop_unusable(index: pd.DataFrame) -> tuple[pd.DataFrame, list[dict]]:
    """Remove images that did not decode, and files whose identical bytes appear under two classes."""
    skipped = [{"path": p, "reason": e} for p, e in zip(index["path"], index["error"]) if e]
    index = index[index["error"] == ""]
    labels_per_digest = index.groupby("digest")["label_name"].nunique()
    conflicting = set(labels_per_digest[labels_per_digest > 1].index)
    if conflicting:
        clash = index[index["digest"].isin(conflicting)]
        for _, group in clash.groupby("digest"):
            for path, label in zip(group["path"], group["label_name"]):
                others = ", ".join(f"{p} ({lab})" for p, lab in zip(group["path"], group["label_name"]) if p != path)
                skipped.append({"path": path, "reason": f"label conflict: class '{label}' but the same file content is {others}"})
        index = index[~index["digest"].isin(conflicting)]
    return index.drop(columns=["error"]), skipped

