"""Duplicates and groups: the images that must stay together in one split, found at index time.

A random image-level split puts copies of one photograph in training and test and inflates the test
accuracy. Three things tie images together:

* **exact duplicates**: the same file content (the decoded cache's ``digest``);
* **near-duplicates**: the same picture re-encoded, resized or slightly brightened. A 256-bit perceptual
  hash (``imagehash.phash``, hash size 16) proposes candidate pairs within ``HAMMING_BITS``; a candidate is
  confirmed when the 16x16 colour thumbnails of the two images correlate by at least ``MIN_CORRELATION``.
  The hash alone cannot separate copies from unrelated look-alikes on the embedded dataset (every image is
  a centred face on a smooth background), so the colour check is needed; both thresholds were measured
  there (numbers in ``HAMMING_BITS``' comment);
* **named groups** (``data.group_by``): a manifest ``group`` column, a regex over the file name, or the
  ``source_photo`` rule for UTKFace-style names, whose ``[age]_[gender]_[race]_[datetime]`` prefix names
  the original photograph under every mask.

Duplicates and named groups are merged (connected components of the "same group" graph, i.e. union-find)
into one ``split_group`` per image, which the split keeps inside one split and one fold.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import tempfile
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import imagehash
import numpy as np
import pandas as pd
from filelock import FileLock
from PIL import Image
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from maskdet.data.images import BadImageError, load_rgb
from maskdet.errors import ConfigError

log = logging.getLogger(__name__)

POLICIES = ("group", "drop", "keep")
HASH_SIZE = 16  # 16x16 = 256-bit pHash, computed on a 64x64 grey copy
THUMB_SIZE = 16  # colour thumbnail for the confirmation
# Measured on the embedded default dataset (8,605 images), against 300 copies of each kind: re-encoded
# copies (JPEG quality 30-95), resized ones (x0.25-x1.5) and brightness x0.9-1.1 stay within 36 bits
# (99 % within 24), while 2,082 pairs of unrelated images also fall within 40 bits, hence the confirmation.
HAMMING_BITS = 40
# Same measurement: copies correlate at >= 0.980 (brightness x1.1 worst, x0.25 resize 0.987), unrelated
# images at most 0.961 among all pairs within 64 bits. 0.975 sits between; 0 false pairs there.
MIN_CORRELATION = 0.975
FINGERPRINT_VERSION = 1
SOURCE_PHOTO = re.compile(r"^(\d{1,3}_[01]_[0-4]_\d+)")  # UTKFace [age]_[gender]_[race]_[datetime]
GROUP_RULES = ("source_photo", "manifest")


# ---------------------------------------------------------------------------------- fingerprints
def fingerprint(image: Image.Image) -> tuple[np.ndarray, np.ndarray]:
    """(256-bit pHash as 4 uint64 words, 16x16 RGB thumbnail as 768 uint8) of one RGB image."""
    small = image.resize((HASH_SIZE * 4, HASH_SIZE * 4), Image.BILINEAR)
    bits = np.packbits(imagehash.phash(small, hash_size=HASH_SIZE).hash.ravel())
    thumb = np.asarray(small.resize((THUMB_SIZE, THUMB_SIZE), Image.BILINEAR), dtype=np.uint8).ravel()
    return bits.view(">u8").astype(np.uint64), thumb


def _fingerprint_file(path: str) -> tuple[np.ndarray, np.ndarray]:
    try:
        return fingerprint(load_rgb(path))
    except BadImageError:  # decoded fine a moment ago; if not now, it simply matches nothing
        return np.zeros(HASH_SIZE**2 // 64, np.uint64), np.zeros(THUMB_SIZE**2 * 3, np.uint8)


def load_or_compute(paths: pd.Series, digests: pd.Series, cache_dir: str | Path,
                    workers: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Fingerprints of ``paths``, computed from the files (not the decoded cache, so that grouping, and
    hence the split, does not change with data.image_size) once per file content, then read from the cache."""
    key = hashlib.sha256(f"v{FINGERPRINT_VERSION}|{'|'.join(digests)}".encode()).hexdigest()[:20]
    path = Path(cache_dir) / "fingerprints" / f"{key}.npz"
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(f"{path}.lock"):
        if not path.exists():
            # PIL releases the GIL while decoding, so threads use every core.
            with ThreadPoolExecutor(workers or os.cpu_count() or 1) as pool:
                found = list(pool.map(_fingerprint_file, paths))
            hashes = np.stack([h for h, _ in found]) if found else np.zeros((0, HASH_SIZE**2 // 64), np.uint64)
            thumbs = np.stack([t for _, t in found]) if found else np.zeros((0, THUMB_SIZE**2 * 3), np.uint8)
            fd, tmp = tempfile.mkstemp(prefix=f".{path.name}-", dir=path.parent)
            with os.fdopen(fd, "wb") as handle:
                np.savez(handle, hashes=hashes, thumbs=thumbs)
            os.replace(tmp, path)  # atomic: a reader sees no file or the whole file
    with np.load(path) as stored:
        return stored["hashes"], stored["thumbs"]


# ---------------------------------------------------------------------------------- pairs
def exact_pairs(digests: pd.Series) -> np.ndarray:
    """Pairs (i, j) of rows with the same content digest (each row linked to the first of its digest)."""
    positions = pd.Series(np.arange(len(digests)), index=pd.Index(digests.to_numpy()))
    first = positions.groupby(level=0).transform("first").to_numpy()
    linked = first != positions.to_numpy()
    return np.stack([first[linked], positions.to_numpy()[linked]], axis=1)


def near_pairs(hashes: np.ndarray, thumbs: np.ndarray, max_bits: int = HAMMING_BITS,
               min_correlation: float = MIN_CORRELATION, chunk: int = 512) -> np.ndarray:
    """Pairs (i < j) of near-duplicates: pHash within ``max_bits`` and thumbnails correlating by at least
    ``min_correlation``. All pairs are compared, in chunks (N^2 / 2 popcounts: about a second for 10,000
    images); written with numpy because imagehash compares one pair at a time."""
    vectors = thumbs.astype(np.float32)
    vectors -= vectors.mean(axis=1, keepdims=True)  # brightness and contrast changes cancel out
    vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-6)
    found = [np.zeros((0, 2), dtype=np.int64)]
    for start in range(0, len(hashes), chunk):
        block = hashes[start:start + chunk]
        distance = np.zeros((len(block), len(hashes) - start), dtype=np.int32)
        for word in range(hashes.shape[1]):
            distance += np.bitwise_count(block[:, word, None] ^ hashes[None, start:, word])
        i, j = np.nonzero(distance <= max_bits)
        i, j = i + start, j + start
        i, j = i[i < j], j[i < j]
        confirmed = np.einsum("ij,ij->i", vectors[i], vectors[j]) >= min_correlation
        found.append(np.stack([i[confirmed], j[confirmed]], axis=1))
    return np.concatenate(found)


def components(n: int, pairs: np.ndarray) -> np.ndarray:
    """Connected component of every row given "same group" pairs (union-find, via scipy)."""
    pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
    graph = coo_matrix((np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])), shape=(n, n))
    return connected_components(graph, directed=False)[1]


# ---------------------------------------------------------------------------------- duplicates
def find_duplicates(index: pd.DataFrame, hashes: np.ndarray, thumbs: np.ndarray) -> pd.DataFrame:
    """Add ``dup_group`` (-1: no copy), ``dup_kind`` (exact / near) and ``duplicate_of`` (the path of the
    group's first image, "" for that image itself) to ``index``, whose rows match ``hashes``/``thumbs``."""
    index = index.reset_index(drop=True)
    rows = np.arange(len(index))
    component = components(len(index), np.concatenate([exact_pairs(index["digest"]), near_pairs(hashes, thumbs)]))
    in_group = np.bincount(component)[component] > 1
    first = pd.Series(rows).groupby(component).transform("first").to_numpy()
    one_digest = index.groupby(component)["digest"].transform("nunique").to_numpy() == 1
    dup_group = np.full(len(index), -1)
    dup_group[in_group] = pd.factorize(component[in_group])[0]
    return index.assign(
        dup_group=dup_group,
        dup_kind=np.where(in_group, np.where(one_digest, "exact", "near"), ""),
        duplicate_of=np.where(in_group & (first != rows), index["path"].to_numpy()[first], ""),
    )


def drop_copies(index: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame, list[dict]]:
    """Policy ``drop``: keep the first image of each label in each duplicate group; the others are listed
    as skipped, "duplicate of <kept path>". Near-duplicates under different labels are kept (and stay
    grouped). Returns (kept rows, dropped rows, skipped entries)."""
    keys = index["dup_group"].astype(str) + "|" + index["label_name"]
    dropped = (index["dup_group"] >= 0) & keys.duplicated()
    kept_path = index["path"].groupby(keys).transform("first")
    skipped = [{"path": p, "reason": "listed twice (the same file)" if p == k else f"duplicate of {k}"}
               for p, k in zip(index.loc[dropped, "path"], kept_path[dropped])]
    return index[~dropped], index[dropped], skipped


# ---------------------------------------------------------------------------------- named groups
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


def group_keys(index: pd.DataFrame, rule: tuple[str, re.Pattern | None] | None) -> pd.Series:
    """The named group of every row ("" where the rule gives none: the image is a group of its own).

    A regex's first capture group (or its whole match) is the key; it is searched in the file name."""
    if rule is None:
        return pd.Series("", index=index.index)
    kind, pattern = rule
    if kind == "manifest":
        if "group" not in index.columns:
            raise ConfigError("data.group_by=manifest but the manifest has no 'group' column: add one (images with "
                              "the same value stay in one split), or use data.group_by=source_photo or {regex: ...}.")
        return index["group"].fillna("").astype(str).str.strip()

    def key(path: str) -> str:
        match = pattern.search(Path(path).name)
        if match is None:
            return ""
        return match.group(1) if match.groups() else match.group(0)

    return index["path"].map(key)


def split_groups(index: pd.DataFrame, keys: pd.Series, with_duplicates: bool) -> np.ndarray:
    """One id per row; rows sharing an id (same named group, or copies when ``with_duplicates``) must
    share a split. Every id is a component of the union of both relations."""
    positions = pd.Series(np.arange(len(index)), index=index.index)
    named = keys != ""
    first = positions[named].groupby(keys[named].to_numpy()).transform("first")
    pairs = [np.stack([first.to_numpy(), positions[named].to_numpy()], axis=1)]
    if with_duplicates:
        copies = index["dup_group"].to_numpy() >= 0
        first_copy = positions[copies].groupby(index.loc[copies, "dup_group"].to_numpy()).transform("first")
        pairs.append(np.stack([first_copy.to_numpy(), positions[copies].to_numpy()], axis=1))
    return components(len(index), np.concatenate(pairs))


# ---------------------------------------------------------------------------------- report
def crossing(index: pd.DataFrame, column: str) -> pd.Series:
    """For each group id in ``column`` (>= 0, of size > 1), whether its images sit in more than one split
    or, within the training pool, more than one fold."""
    grouped = index[index[column] >= 0]
    grouped = grouped[grouped.groupby(column)[column].transform("size") > 1]
    pool = grouped[grouped["split"] != "test"]
    splits = grouped.groupby(column)["split"].nunique() > 1
    folds = pool.groupby(column)["fold"].nunique().reindex(splits.index, fill_value=1) > 1
    return splits | folds


def summarise(index: pd.DataFrame, dropped: pd.DataFrame, policy: str, rule: str | None, unnamed: int,
              listed: int = 50) -> dict:
    """The report's duplicate and group figures: every duplicate group counted, the first ``listed`` (those
    crossing splits first) named with their files and splits, copies removed by ``drop`` shown as split
    "dropped"; how many groups cross splits (or folds); the named groups' counts."""
    cross = crossing(index, "dup_group")
    members = pd.concat([index[index["dup_group"] >= 0], dropped.assign(split="dropped", fold=-1)])
    groups = []
    for gid, part in members.groupby("dup_group", sort=True):
        groups.append({"kind": part["dup_kind"].iloc[0], "crosses_splits": bool(cross.get(gid, False)),
                       "images": [{"path": p, "label": lab, "split": s, "fold": int(f) if f >= 0 else None}
                                  for p, lab, s, f in zip(part["path"], part["label_name"], part["split"],
                                                          part["fold"].fillna(-1))]})
    groups.sort(key=lambda g: (not g["crosses_splits"], g["images"][0]["path"]))
    sizes = index.groupby("split_group").size()
    return {
        "duplicates": {
            "policy": policy, "hamming_bits": HAMMING_BITS, "min_correlation": MIN_CORRELATION,
            "groups": len(groups),
            "exact_groups": sum(g["kind"] == "exact" for g in groups),
            "near_groups": sum(g["kind"] == "near" for g in groups),
            "images_in_groups": int(len(members)),
            "copies_dropped": int(len(dropped)),
            "groups_crossing_splits": int(cross.sum()),
            "listed": groups[:listed],
        },
        "split_groups": {
            "group_by": rule,
            "groups_of_several_images": int((sizes > 1).sum()),
            "images_in_them": int(sizes[sizes > 1].sum()),
            "largest": int(sizes.max()) if len(sizes) else 0,
            "names_without_group": int(unnamed),
            "groups_crossing_splits": int(crossing(index, "split_group").sum()),
        },
    }
