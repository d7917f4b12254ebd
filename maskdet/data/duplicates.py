"""Duplicates and groups: the images that must stay together in one split, found at index time.

A random image-level split puts copies of one photograph in training and test and inflates the test
accuracy. Three things tie images together:

* **exact duplicates**: the same file content (the decoded cache's ``digest``);
* **near-duplicates**: the same picture re-encoded, resized, slightly brightened, flipped, cropped (centred,
  >= 80 % of the area), rotated (up to 10 degrees) or made grey. Every image is also fingerprinted as a few
  ``VARIANTS`` (mirrored, centre-cropped, rotated), so that a copy lands near one of them. A 256-bit
  perceptual hash (``imagehash.phash``'s, hash size 16) proposes candidate pairs within ``HAMMING_BITS``; a
  candidate is confirmed when the 16x16 colour thumbnails (grey ones when either image is grey) of the two
  images correlate by at least ``MIN_CORRELATION``.
  The hash alone cannot separate copies from unrelated look-alikes on the embedded dataset (every image is
  a centred face on a smooth background), so the colour check is needed; both thresholds were measured
  there (numbers in ``HAMMING_BITS``' comment). Comparing all N x N K hash pairs is the costly part, so the
  pairs found are cached beside the fingerprints, keyed by content and thresholds: a dataset's pairs are
  computed once (2.7 s for the 8,605 embedded images, 8.5 s before the tiled comparison; two busy cores) and
  every later run and fold reads them (0.06 s; ``benchmarks/duplicates.py --speed``);
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
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
from filelock import FileLock
from PIL import Image
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from maskdet.data.images import BadImageError, load_rgb
from maskdet.data.settings import POLICIES, SOURCE_PHOTO, parse_group_by  # noqa: F401 - the rules' home
from maskdet.errors import ConfigError

log = logging.getLogger(__name__)

HASH_SIZE = 16  # 16x16 = 256-bit pHash, computed on a 64x64 grey copy
THUMB_SIZE = 16  # colour thumbnail for the confirmation
SIDE = HASH_SIZE * 4  # the 64x64 copy every variant is drawn at
# The variants each image is also fingerprinted as, so that a transformed copy's plain fingerprint lands
# near one of its original's: (mirrored, kept side of a centred crop, rotation in degrees). Crops of 95 and
# 90 % of the side cover centred crops keeping >= 80 % of the area (side >= 0.894); rotations every 5 degrees
# leave a copy rotated by up to 10 degrees (PIL/torchvision style: about the centre, black corners) within
# 2.5 degrees of a variant. Variant 0 is the image as it is.
VARIANTS = ((False, 1.0, 0.0), (True, 1.0, 0.0), (False, 0.95, 0.0), (False, 0.9, 0.0),
            (False, 1.0, -7.5), (False, 1.0, -2.5), (False, 1.0, 2.5), (False, 1.0, 7.5))
# Measured on the embedded default dataset (8,605 images; benchmarks/duplicates.py, 300 copies of each kind):
# re-encoded copies (JPEG quality 30-95), resized ones (x0.25-x1.5) and brightness x0.9-1.1 stay within 36 bits
# (99 % within 24) of the image as it is; flipped copies match the mirrored variant within a few bits, centred
# crops the nearest crop within 30 bits, rotations the nearest rotation within 48. Unrelated images fall within
# 40 bits too (2,082 pairs), hence the confirmation. Crops at another place than the centre are not covered
# (175/300 caught on the embedded set, 21/60 on photos). Tried (same copies): 0.95 and 0.9 crops anchored at the
# 4 corners and 4 edge midpoints (K = 24, 3x the compare and crop cost) catch 290/300 and 38/60 but pair 2
# embedded and 1 LFW images falsely (correlation 0.9721-0.9723), and MIN_CORRELATION 0.975 to avoid that costs
# recall; 0.95 corners only (K = 12, correlation 0.975): 250/300 and 30/60, still 1 LFW pair. Not adopted.
HAMMING_BITS = 56
# Same measurement: copies correlate with the matching variant at >= 0.975 (brightness x1.1 and rotations
# worst); unrelated images at most 0.964 among 1,500 x 8,605 (image, variant) pairs within 56 bits (0.961 with
# the image as it is). 0.972 sits between; 0 false pairs among all 8,605 images.
MIN_CORRELATION = 0.972
# A grey copy keeps its pHash (computed on grey) but not its colours: when either image is grey (mean channel
# spread of the thumbnail below GREY_SPREAD), grey thumbnails are compared instead. Grey look-alikes are common
# (LFW's 25 px grey faces; the embedded faces without their colours correlate at 0.95 and more), so the hash
# must be much closer: grey copies stay within 6 bits and correlate at >= 0.99; 0 pairs among LFW's 200 crops.
GREY_SPREAD = 2.0
GREY_BITS = 24
MIN_GREY_CORRELATION = 0.99
FINGERPRINT_VERSION = 2
GROUP_RULES = ("source_photo", "manifest")
_WORDS = HASH_SIZE**2 // 64
_LUMA = np.array([0.299, 0.587, 0.114], np.float32)  # PIL's convert("L")
# rows 0..HASH_SIZE-1 of the (unnormalised) DCT-II matrix over SIDE samples: imagehash.phash's low frequencies
_DCT = np.cos(np.pi * np.arange(HASH_SIZE)[:, None] * (2 * np.arange(SIDE)[None, :] + 1) / (2 * SIDE))


# ---------------------------------------------------------------------------------- fingerprints
def variants(image: Image.Image) -> np.ndarray:
    """The ``VARIANTS`` of one RGB image as K x 64 x 64 x 3 uint8. The plain and mirrored ones come straight from
    the image (as before variants existed); crops and rotations from one copy of 80 px on its long side, whose
    aspect is kept so that a rotation turns the picture as a rotated copy of it does (cheap for big photos)."""
    plain = image.resize((SIDE, SIDE), Image.BILINEAR)
    scale = SIDE / 0.8 / max(image.size)
    small = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))), Image.BILINEAR)
    drawn = []
    for mirrored, side, angle in VARIANTS:
        if side == 1 and not angle:
            drawn.append(plain.transpose(Image.FLIP_LEFT_RIGHT) if mirrored else plain)
            continue
        view = small.rotate(angle, Image.BILINEAR) if angle else small
        w, h = view.size
        box = (w * (1 - side) / 2, h * (1 - side) / 2, w * (1 + side) / 2, h * (1 + side) / 2)
        drawn.append(view.resize((SIDE, SIDE), Image.BILINEAR, box=box))
    return np.stack([np.asarray(d) for d in drawn])


def fingerprint(image: Image.Image) -> tuple[np.ndarray, np.ndarray]:
    """(K x 256-bit pHash as K x 4 uint64 words, K x 16x16 RGB thumbnail as K x 768 uint8) of one RGB image,
    one row per variant. The pHash is imagehash.phash's (median-thresholded low DCT frequencies of the 64x64
    grey copy), computed for all variants at once."""
    drawn = variants(image).astype(np.float32)
    grey = drawn @ _LUMA
    low = _DCT @ grey @ _DCT.T
    bits = np.packbits((low.reshape(len(low), -1) > np.median(low.reshape(len(low), -1), axis=1, keepdims=True)), axis=1)
    block = SIDE // THUMB_SIZE
    # block means, rows then columns: the same numbers as one mean over axes (2, 4), 4x faster (contiguous sums)
    rows = drawn.reshape(len(drawn) * THUMB_SIZE, block, SIDE * 3).sum(axis=1)
    thumbs = rows.reshape(len(drawn), THUMB_SIZE, THUMB_SIZE, block, 3).sum(axis=3) / block**2
    return bits.view(">u8").astype(np.uint64), np.rint(thumbs).astype(np.uint8).reshape(len(drawn), -1)


def _fingerprint_file(path: str) -> tuple[np.ndarray, np.ndarray]:
    try:
        return fingerprint(load_rgb(path))
    except BadImageError:  # decoded fine a moment ago; if not now, it simply matches nothing
        return np.zeros((len(VARIANTS), _WORDS), np.uint64), np.zeros((len(VARIANTS), THUMB_SIZE**2 * 3), np.uint8)


def fingerprint_key(digests: pd.Series) -> str:
    """The fingerprint cache's content key: FINGERPRINT_VERSION and the images' digests, in order."""
    return hashlib.sha256(f"v{FINGERPRINT_VERSION}|{'|'.join(digests)}".encode()).hexdigest()[:20]


def pairs_key(digests: pd.Series) -> str:
    """The pair cache's key: the fingerprint key and every threshold ``near_pairs`` uses."""
    thresholds = (HAMMING_BITS, MIN_CORRELATION, GREY_SPREAD, GREY_BITS, MIN_GREY_CORRELATION)
    return hashlib.sha256(f"{fingerprint_key(digests)}|{thresholds}".encode()).hexdigest()[:20]


def _write_atomically(path: Path, write) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}-", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
        os.replace(tmp, path)  # atomic: a reader sees no file or the whole file
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_or_compute(paths: pd.Series, digests: pd.Series, cache_dir: str | Path,
                    workers: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Fingerprints of ``paths`` (N x K x 4 hashes, N x K x 768 thumbnails), computed from the files (not the
    decoded cache, so that grouping, and hence the split, does not change with data.image_size) once per file
    content, then read from the cache; and their ``near_pairs``, computed once per content and thresholds
    (``<cache>/fingerprints/<fingerprint key>.pairs-<pairs key>.npy``, under the same lock, written
    atomically), so that every later run and fold reads them. Returns (hashes, thumbnails, near pairs)."""
    key = fingerprint_key(digests)
    path = Path(cache_dir) / "fingerprints" / f"{key}.npz"
    pairs_path = path.with_name(f"{key}.pairs-{pairs_key(digests)}.npy")
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(f"{path}.lock"):
        if not path.exists():
            # PIL releases the GIL while decoding, so threads use every core.
            with ThreadPoolExecutor(workers or os.cpu_count() or 1) as pool:
                found = list(pool.map(_fingerprint_file, paths))
            k = len(VARIANTS)
            hashes = np.stack([h for h, _ in found]) if found else np.zeros((0, k, _WORDS), np.uint64)
            thumbs = np.stack([t for _, t in found]) if found else np.zeros((0, k, THUMB_SIZE**2 * 3), np.uint8)
            _write_atomically(path, lambda handle: np.savez(handle, hashes=hashes, thumbs=thumbs))
        with np.load(path) as stored:
            hashes, thumbs = stored["hashes"], stored["thumbs"]
        if not pairs_path.exists():
            pairs = near_pairs(hashes, thumbs, workers=workers)
            _write_atomically(pairs_path, lambda handle: np.save(handle, pairs))
    return hashes, thumbs, np.load(pairs_path)


# ---------------------------------------------------------------------------------- pairs
def exact_pairs(digests: pd.Series) -> np.ndarray:
    """Pairs (i, j) of rows with the same content digest (each row linked to the first of its digest)."""
    positions = pd.Series(np.arange(len(digests)), index=pd.Index(digests.to_numpy()))
    first = positions.groupby(level=0).transform("first").to_numpy()
    linked = first != positions.to_numpy()
    return np.stack([first[linked], positions.to_numpy()[linked]], axis=1)


def _unit(vectors: np.ndarray) -> np.ndarray:
    vectors = vectors.astype(np.float32)
    vectors -= vectors.mean(axis=-1, keepdims=True)  # brightness and contrast changes cancel out
    return vectors / np.maximum(np.linalg.norm(vectors, axis=-1, keepdims=True), 1e-6)


def _correlation(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise correlation of two stacks of thumbnails (flattened)."""
    return np.einsum("ij,ij->i", _unit(a), _unit(b))


def _grey(thumbs: np.ndarray) -> np.ndarray:
    """Grey versions (M x 256) of M flattened RGB thumbnails."""
    return thumbs.reshape(len(thumbs), thumbs.shape[1] // 3, 3).astype(np.float32) @ _LUMA


def _within(query: np.ndarray, table: np.ndarray, max_bits: int, workers: int | None = None, rows: int = 64,
            cols: int = 8192) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rows (q, t, bits) of every ``query`` x ``table`` pair of hashes (Q x W and T x W uint64 words) whose
    Hamming distance ``bits`` is within ``max_bits``.

    All pairs are compared, but cheaply: XOR and popcount word by word into uint8 sums, in tiles of
    ``rows`` x ``cols`` (about 0.5 MB each) that stay in the CPU cache and reuse their buffers, in
    ``workers`` threads (numpy releases the GIL); the exact distance is then taken for the few candidates
    only (a uint8 sum wraps at 256, i.e. only for exactly complementary hashes, which the exact distance
    drops again)."""
    columns = np.ascontiguousarray(table.T)  # word-major: one contiguous row of words per hash word

    def scan(first: int, last: int) -> tuple[np.ndarray, np.ndarray]:
        xor = np.empty((rows, cols), np.uint64)
        count = np.empty((rows, cols), np.uint8)
        total = np.empty((rows, cols), np.uint8)
        found_q, found_t = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)]
        for r in range(first, last, rows):
            block = query[r:min(r + rows, last)]
            for c in range(0, len(table), cols):
                part = columns[:, c:c + cols]
                shape = (slice(len(block)), slice(part.shape[1]))
                x, n, t = xor[shape], count[shape], total[shape]
                np.bitwise_xor(block[:, 0, None], part[None, 0], out=x)
                np.bitwise_count(x, out=t)
                for word in range(1, query.shape[1]):
                    np.bitwise_xor(block[:, word, None], part[None, word], out=x)
                    np.bitwise_count(x, out=n)
                    t += n
                q, j = np.nonzero(t <= max_bits)
                found_q.append(q + r)
                found_t.append(j + c)
        return np.concatenate(found_q), np.concatenate(found_t)

    workers = max(1, min(workers or os.cpu_count() or 1, len(query) // rows))
    bounds = np.linspace(0, len(query), workers + 1).astype(int) // rows * rows
    bounds[-1] = len(query)
    with ThreadPoolExecutor(workers) as pool:
        parts = list(pool.map(scan, bounds[:-1], bounds[1:]))
    q, t = np.concatenate([p for p, _ in parts]), np.concatenate([t for _, t in parts])
    bits = np.bitwise_count(query[q] ^ table[t]).sum(axis=1, dtype=np.int64)
    close = bits <= max_bits
    return q[close], t[close], bits[close]


def near_pairs(hashes: np.ndarray, thumbs: np.ndarray, max_bits: int = HAMMING_BITS,
               min_correlation: float = MIN_CORRELATION, workers: int | None = None) -> np.ndarray:
    """Pairs (i < j) of near-duplicates: image i as it is against every variant of image j (and, for variant
    0, j > i only), pHash within ``max_bits`` and colour thumbnails correlating by at least ``min_correlation``;
    when either image is grey, within GREY_BITS and grey thumbnails correlating by MIN_GREY_CORRELATION. All
    N x N K hash pairs are compared (``_within``); written with numpy because imagehash compares one pair at
    a time. ``load_or_compute`` caches its result per dataset."""
    n, k = hashes.shape[:2]
    first = thumbs[:, 0].reshape(n, thumbs.shape[-1] // 3, 3).astype(np.float32)
    is_grey = np.abs(np.diff(first, axis=-1)).mean(axis=(1, 2)) < GREY_SPREAD
    i, jv, bits = _within(hashes[:, 0], hashes.reshape(n * k, hashes.shape[-1]), max(max_bits, GREY_BITS), workers)
    j, v = jv // k, jv % k  # row j * k + v: variant v of image j
    either_grey = is_grey[i] | is_grey[j]
    keep = ((i < j) | ((v > 0) & (i != j))) & (bits <= np.where(either_grey, GREY_BITS, max_bits))
    i, j, v, either_grey = i[keep], j[keep], v[keep], either_grey[keep]
    confirmed = np.zeros(len(i), bool)
    for start in range(0, len(i), 16384):  # thumbnails gathered and normalised a slice of candidates at a time
        part = slice(start, start + 16384)
        a, b, g = thumbs[i[part], 0], thumbs[j[part], v[part]], either_grey[part]
        confirmed[part][~g] = _correlation(a[~g], b[~g]) >= min_correlation
        confirmed[part][g] = _correlation(_grey(a[g]), _grey(b[g])) >= MIN_GREY_CORRELATION
    found = np.stack([np.minimum(i, j)[confirmed], np.maximum(i, j)[confirmed]], axis=1)
    return np.unique(found.reshape(-1, 2), axis=0)


def components(n: int, pairs: np.ndarray) -> np.ndarray:
    """Connected component of every row given "same group" pairs (union-find, via scipy)."""
    pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
    graph = coo_matrix((np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])), shape=(n, n))
    return connected_components(graph, directed=False)[1]


# ---------------------------------------------------------------------------------- duplicates
def find_duplicates(index: pd.DataFrame, near: np.ndarray) -> pd.DataFrame:
    """Add ``dup_group`` (-1: no copy), ``dup_kind`` (exact / near) and ``duplicate_of`` (the path of the
    group's first image, "" for that image itself) to ``index``; ``near``: its rows' near pairs
    (``near_pairs``, as ``load_or_compute`` returns them)."""
    index = index.reset_index(drop=True)
    rows = np.arange(len(index))
    component = components(len(index), np.concatenate([exact_pairs(index["digest"]), near]))
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
