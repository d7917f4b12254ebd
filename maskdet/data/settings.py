"""``DataSettings``: the whole ``data`` config (``_target_: maskdet.data.DataSettings``), checked when it is
built, before any file is read or written.

Light on purpose (no pandas, torch or scikit-learn): ``maskdet.preflight`` builds the settings before an
entry point imports anything heavy, so a wrong value is refused in about a second. The defaults are those of
``maskdet/conf/data/default.yaml`` (``config.packaged_defaults``), so Python callers get what the command line
gets.
"""

from __future__ import annotations

import csv
import functools
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from maskdet.config import packaged_defaults
from maskdet.data.demographics import GROUP_COLUMNS, normalise_group
from maskdet.errors import ConfigError

DEFAULTS = packaged_defaults("data/default.yaml")
FOLD_KEY = "data.fold"  # the setting a k-fold sweep varies (sweep summaries, job names, in-job folds)
REPEAT_KEY = "data.fold_seed"  # the setting a repeated k-fold varies: each value is another partition into folds
POLICIES = ("group", "drop", "keep")  # data.duplicates (maskdet.data.duplicates)
SOURCE_PHOTO = re.compile(r"^(\d{1,3}_[01]_[0-4]_\d+)")  # UTKFace [age]_[gender]_[race]_[datetime]


def default_cache_dir() -> str:
    """``paths.cache_dir`` of ``maskdet/conf/paths/default.yaml``, resolved now (MASKDET_CACHE_DIR, MASKDET_ROOT)."""
    from omegaconf import OmegaConf

    return str(OmegaConf.create({"paths": packaged_defaults("paths/default.yaml")}).paths.cache_dir)


@dataclass(frozen=True)
class DataSettings:
    """Every ``data.*`` key (see ``maskdet/conf/data/default.yaml`` for what each means and its default)."""

    source: Callable[..., object]  # a reader of maskdet.data.sources (a data layout), partially applied
    root: str | None = None  # ??? in the YAML: every layout but synthetic needs one
    image_size: int = DEFAULTS["image_size"]
    batch_size: int = DEFAULTS["batch_size"]
    eval_batch_size: int | None = DEFAULTS["eval_batch_size"]
    test_size: float = DEFAULTS["test_size"]
    num_folds: int = DEFAULTS["num_folds"]
    fold: int = DEFAULTS["fold"]
    seed: int = DEFAULTS["seed"]
    fold_seed: int | None = DEFAULTS["fold_seed"]
    label_map: str | Mapping[str, str] | None = DEFAULTS["label_map"]
    subset: Mapping[str, object] = field(default_factory=lambda: dict(DEFAULTS["subset"]))
    cap_per_class: int | None = DEFAULTS["cap_per_class"]
    balance_by: Sequence[str] = tuple(DEFAULTS["balance_by"])
    age_bins: Sequence[int] = tuple(DEFAULTS["age_bins"])
    augment: Callable | None = None  # a torch module applied to training batches on the device
    decoded_cache: bool = DEFAULTS["decoded_cache"]
    feature_cache: bool = DEFAULTS["feature_cache"]
    num_workers: int = DEFAULTS["num_workers"]
    cache_dir: str = field(default_factory=default_cache_dir)
    cache_memory_gb: float | None = DEFAULTS["cache_memory_gb"]
    duplicates: str = DEFAULTS["duplicates"]
    group_by: str | Mapping | None = DEFAULTS["group_by"]
    splits_file: str | None = DEFAULTS["splits_file"]
    exclude: str | None = DEFAULTS["exclude"]
    excluded: tuple[str, ...] = field(default=(), init=False)  # the paths data.exclude lists, read once here

    def __post_init__(self):
        # Every value is checked here, before any file is read or written (maskdet.preflight builds the
        # settings first for exactly this), so a wrong value never costs a cache build.
        if not callable(self.source):
            raise ConfigError(f"data.source={self.source!r} is not a reader: choose a layout with data=<name> "
                              "(maskdet/conf/data/), or name a reader function with data.source._target_=<module.function> "
                              "and data.source._partial_=true.")
        whole = _require_whole
        whole("image_size", self.image_size, 8, " (pixels)")
        whole("batch_size", self.batch_size, 1)
        if self.eval_batch_size is not None:
            whole("eval_batch_size", self.eval_batch_size, 1, ", or null for max(batch_size, 256)")
        if self.cap_per_class is not None:
            whole("cap_per_class", self.cap_per_class, 1, " (images per class in each split); use "
                  "data.cap_per_class=null for no cap")
        whole("num_folds", self.num_folds, 2)
        whole("fold", self.fold, 0)
        whole("num_workers", self.num_workers, 0)
        if self.fold_seed is not None:
            whole("fold_seed", self.fold_seed, 0, ", or null for data.seed")
            if self.splits_file:
                raise ConfigError(f"data.fold_seed={self.fold_seed} re-draws the folds, but data.splits_file="
                                  f"{self.splits_file} fixes them: drop one of the two.")
        if not 0 <= self.fold < self.num_folds:
            raise ConfigError(f"data.fold={self.fold} is out of range for data.num_folds={self.num_folds} "
                              f"(0..{self.num_folds - 1}).")
        if isinstance(self.test_size, bool) or not isinstance(self.test_size, int | float) or not 0 < self.test_size < 1:
            raise ConfigError(f"data.test_size={self.test_size!r} must be a fraction between 0 and 1 (e.g. 0.3).")
        balance_by = [self.balance_by] if isinstance(self.balance_by, str) else list(self.balance_by or [])
        unknown = [str(c) for c in balance_by if c not in GROUP_COLUMNS]
        if unknown:
            raise ConfigError(f"data.balance_by: {', '.join(unknown)} is not a demographic column: balance training "
                              f"batches over any of {', '.join(GROUP_COLUMNS)} (e.g. data.balance_by=[gender]), or [] "
                              "for none.")
        if balance_by and not self.decoded_cache:
            raise ConfigError(f"data.balance_by={balance_by} balances training batches only on the cached path; it "
                              "cannot be honoured with data.decoded_cache=false. Drop data.balance_by, or keep the "
                              "cache (data.decoded_cache=true).")
        for attribute, wanted in dict(self.subset or {}).items():
            if attribute not in (*GROUP_COLUMNS, "label_name"):
                raise ConfigError(f"data.subset.{attribute}: no such column; use one of {', '.join(GROUP_COLUMNS)}, "
                                  "label_name.")
            for value in [wanted] if isinstance(wanted, str | int) or wanted is None else list(wanted):
                try:
                    normalise_group(attribute, value)
                except ValueError as err:
                    raise ConfigError(f"data.subset.{attribute}: {err}") from None
        if not (self.label_map is None or self.label_map in ("none", "binary") or isinstance(self.label_map, Mapping)):
            raise ConfigError(f"data.label_map={self.label_map!r} is unknown: use null, binary or a mapping "
                              "{old_class: new_class}.")
        edges = list(self.age_bins)
        if len(edges) < 2 or any(not isinstance(b, int | float) or isinstance(b, bool) for b in edges) \
                or any(b <= a for a, b in zip(edges, edges[1:])):
            raise ConfigError(f"data.age_bins={edges} must be at least two increasing ages, e.g. [0, 13, 20, 40, 60, 120].")
        memory = self.cache_memory_gb
        if memory is not None and (isinstance(memory, bool) or not isinstance(memory, int | float) or memory < 0):
            raise ConfigError(f"data.cache_memory_gb={memory!r} must be a size in GB (0: always read batches from "
                              "the cache file), or null for half the memory available.")
        if self.duplicates not in POLICIES:
            raise ConfigError(f"data.duplicates={self.duplicates!r} is unknown: use group (copies stay in one split), "
                              "drop (keep one copy) or keep (no grouping; warns when copies cross splits).")
        parse_group_by(self.group_by)  # refuses a malformed rule
        if self.exclude is not None:  # a missing or malformed list is refused before any work
            object.__setattr__(self, "excluded", tuple(read_exclusions(self.exclude)))
        # normalised forms (frozen: set through object.__setattr__)
        object.__setattr__(self, "balance_by", tuple(balance_by))
        object.__setattr__(self, "subset", dict(self.subset or {}))
        object.__setattr__(self, "age_bins", tuple(edges))
        object.__setattr__(self, "eval_batch_size", int(self.eval_batch_size or max(self.batch_size, 256)))
        object.__setattr__(self, "cache_dir", str(self.cache_dir))

    @property
    def source_name(self) -> str:
        from maskdet.data import sources

        return sources.source_name(self.source)

    @property
    def serves_backbone_features(self) -> bool:
        """Whether a frozen backbone's features may be computed once and served instead of images: they must
        be allowed (feature_cache), computed from the decoded cache, and the same every epoch (no augment)."""
        return self.feature_cache and self.decoded_cache and self.augment is None


def _require_whole(key: str, value, least: int, advice: str = "") -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        raise ConfigError(f"data.{key}={value!r} must be a whole number of at least {least}{advice}.")


def parse_group_by(group_by: object) -> tuple[str, re.Pattern | None] | None:
    """``data.group_by``: null, ``source_photo``, ``manifest`` or ``{regex: "<pattern>"}`` -> (rule, regex)."""
    if group_by is None or group_by == "none":
        return None
    if isinstance(group_by, Mapping):
        if set(group_by) != {"regex"}:
            raise ConfigError(f"data.group_by={dict(group_by)} is not understood: use {{regex: '<pattern>'}}, "
                              "source_photo, manifest or null.")
        try:
            return "regex", re.compile(str(group_by["regex"]))
        except re.error as err:
            raise ConfigError(f"data.group_by.regex={group_by['regex']!r} is not a valid regular expression: {err}.") \
                from None
    if group_by == "source_photo":
        return "source_photo", SOURCE_PHOTO
    if group_by == "manifest":
        return "manifest", None
    raise ConfigError(f"data.group_by={group_by!r} is unknown: use source_photo (UTKFace-style names), manifest "
                      "(the manifest's group column), {regex: '<pattern over the file name>'} or null.")


def read_exclusions(path: str | Path) -> list[str]:
    """The image paths that ``data.exclude`` lists: a CSV with a ``path`` column, such as a k-fold sweep's
    label_issues.csv (maskdet.label_issues); paths absolute or relative to ``data.root``. Read with the
    standard library's csv module: the settings check stays free of pandas."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise ConfigError(f"data.exclude={path} does not exist: give a CSV with a 'path' column, such as the "
                          "label_issues.csv that a k-fold sweep writes, or data.exclude=null.")
    stat = path.stat()
    return list(_read_exclusions(path.resolve(), stat.st_mtime_ns, stat.st_size))


@functools.lru_cache(maxsize=8)
def _read_exclusions(path: Path, mtime_ns: int, size: int) -> tuple[str, ...]:
    """``read_exclusions``'s reading, once per version of the file: the settings are built by the check before
    the imports, by preflight and by the run itself."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            rows = list(csv.reader(handle))
    except (csv.Error, UnicodeDecodeError) as err:
        raise ConfigError(f"data.exclude={path} is not a readable CSV file ({type(err).__name__}): give a UTF-8 "
                          "CSV with a 'path' column.") from None
    if not rows:
        raise ConfigError(f"data.exclude={path} is empty: give a CSV with a 'path' column (one image path per row), "
                          "or data.exclude=null.")
    header = rows[0]
    if "path" not in header:
        raise ConfigError(f"data.exclude={path} has no 'path' column (columns: {header[:8]}): give a "
                          "CSV with one image path per row under the header 'path'.")
    column = header.index("path")
    return tuple(row[column] for row in rows[1:] if len(row) > column and row[column].strip())


def normalised_paths(paths: Sequence[str], root: str | None) -> set[str]:
    """Listed paths as the index holds them: relative ones joined to ``root``, all normalised."""
    return {os.path.normpath(p if os.path.isabs(p) or root is None else os.path.join(root, p)) for p in paths}
