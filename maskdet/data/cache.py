"""Decode and resize every image once per (index content, image size); reuse it everywhere.

Decoding JPEGs every epoch of every fold of every sweep job is the waste that dominates small-image
training. The cache holds uint8 ``N x 3 x H x W`` in ``images.npy`` (memory-mapped on load) and, in
``meta.parquet``, each file's content digest and the reason it could not be decoded, if any. It is built
in a temporary folder and renamed into place, so two processes building it at once both end with a
complete cache and a half-built one is never read.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from filelock import FileLock

from maskdet.data.images import BadImageError, load_resized, load_rgb

CACHE_VERSION = 1


@dataclass
class DecodedImages:
    images: np.ndarray | None  # uint8 N x 3 x H x W, memory-mapped (None: validated only)
    errors: pd.Series  # reason per row, "" where the image decoded
    digests: pd.Series  # blake2b of the file bytes, for duplicate / conflict detection
    folder: Path | None


def fingerprint(paths: pd.Series, image_size: int) -> str:
    """Key of a cache: the files (path, size, modification time) and the image size."""
    h = hashlib.sha256(f"v{CACHE_VERSION}|{image_size}".encode())
    for path in paths:
        st = os.stat(path)
        h.update(f"|{path}|{st.st_size}|{st.st_mtime_ns}".encode())
    return h.hexdigest()[:20]


def _decode_into(images: np.ndarray | None, i: int, path: str, size: int) -> tuple[str, str]:
    """Decode file ``i`` into ``images[i]`` (or only check it when ``images`` is None)."""
    try:
        data = Path(path).read_bytes()
    except OSError as err:
        return f"unreadable: {err.strerror}", ""
    digest = hashlib.blake2b(data, digest_size=16).hexdigest()
    try:
        if images is None:
            load_rgb(path)
        else:
            images[i] = load_resized(path, size).transpose(2, 0, 1)
    except BadImageError as err:
        return str(err), digest
    return "", digest


def _decode_all(images: np.ndarray | None, paths: pd.Series, size: int, workers: int | None) -> list[tuple[str, str]]:
    # PIL releases the GIL while decoding and resizing, so threads use every core without copying arrays.
    with ThreadPoolExecutor(workers or os.cpu_count() or 1) as pool:
        return list(pool.map(lambda a: _decode_into(images, a[0], a[1], size), enumerate(paths)))


def validate(paths: pd.Series, workers: int | None = None) -> DecodedImages:
    """Decode every file once without keeping pixels (the streaming path), to refuse bad files up front."""
    results = _decode_all(None, paths, 0, workers)
    return DecodedImages(None, pd.Series([r[0] for r in results]), pd.Series([r[1] for r in results]), None)


def build(paths: pd.Series, image_size: int, folder: Path, workers: int | None = None) -> None:
    """Decode ``paths`` into ``folder``, created atomically."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    try:
        n = len(paths)
        images = np.lib.format.open_memmap(tmp / "images.npy", mode="w+", dtype=np.uint8,
                                           shape=(n, 3, image_size, image_size))
        results = _decode_all(images, paths, image_size, workers)
        images.flush()
        del images
        meta = pd.DataFrame({"path": list(paths), "error": [r[0] for r in results], "digest": [r[1] for r in results]})
        meta.to_parquet(tmp / "meta.parquet", index=False)
        try:
            os.rename(tmp, folder)
        except OSError:
            if not (folder / "meta.parquet").exists():  # not "another process won the race"
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def load_or_build(paths: pd.Series, image_size: int, cache_dir: str | Path, workers: int | None = None) -> DecodedImages:
    """The decoded images of ``paths`` at ``image_size``, building the cache on first use."""
    folder = Path(cache_dir) / "decoded" / f"{image_size}px-{fingerprint(paths, image_size)}"
    if not (folder / "meta.parquet").exists():
        folder.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(f"{folder}.lock"):  # parallel sweep jobs: one builds, the others wait and reuse it
            if not (folder / "meta.parquet").exists():
                build(paths, image_size, folder, workers)
    meta = pd.read_parquet(folder / "meta.parquet")
    images = np.load(folder / "images.npy", mmap_mode="r")
    return DecodedImages(images, meta["error"].fillna(""), meta["digest"].fillna(""), folder)


def load_or_build_features(decoded: DecodedImages, key: str, extract, batch_size: int = 256) -> np.ndarray:
    """Backbone features of every decoded image, computed once per (decoded cache, backbone key).

    ``extract`` maps a float batch in [0, 1] (B x 3 x H x W) to features (B x D). A frozen backbone gives
    the same features every epoch, fold and run, so only the head needs to train on them.
    """
    path = decoded.folder / f"features-{key}.npy"
    with FileLock(f"{path}.lock"):
        if not path.exists():
            _build_features(decoded, path, extract, batch_size)
    return np.load(path, mmap_mode="r")


def _build_features(decoded: DecodedImages, path: Path, extract, batch_size: int) -> None:
    import torch

    valid = np.flatnonzero(decoded.errors.to_numpy() == "")
    chunks = []
    with torch.inference_mode():
        for start in range(0, len(valid), batch_size):
            rows = valid[start:start + batch_size]
            images = torch.from_numpy(np.ascontiguousarray(decoded.images[rows])).float().div_(255)
            chunks.append(extract(images).float().cpu().numpy())
    features = np.zeros((len(decoded.errors), chunks[0].shape[1]), dtype=np.float32)
    features[valid] = np.concatenate(chunks)
    fd, tmp = tempfile.mkstemp(prefix=".features-", suffix=".npy", dir=decoded.folder)
    with os.fdopen(fd, "wb") as handle:
        np.save(handle, features)
    os.replace(tmp, path)  # atomic: a reader sees the old state or the whole file
