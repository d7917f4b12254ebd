"""Decode and resize every image once per (index content, image size); reuse it everywhere.

Decoding JPEGs every epoch of every fold of every sweep job is the waste that dominates small-image
training. The cache holds uint8 ``N x 3 x H x W`` in ``images.npy`` (memory-mapped on load) and, in
``meta.parquet``, each file's content digest and the reason it could not be decoded, if any. It is built
in a temporary folder and renamed into place, so two processes building it at once both end with a
complete cache and a half-built one is never read. The space a cache file needs is checked and
reserved before it is written, and the temporary folders of interrupted builds are removed. Rows are
written with ``os.pwrite`` in chunks, so building the cache of any number of files holds a bounded
amount of memory, and a long build reports its progress.
"""

from __future__ import annotations

import errno
import hashlib
import logging
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
from maskdet.errors import DataError
from maskdet.progress import progress
from maskdet.writing import remove_orphans, temporary_sibling

CACHE_VERSION = 2  # 2: images are turned upright by their EXIF orientation; truncated PNGs refused
log = logging.getLogger("maskdet.data")


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
        try:
            st = os.stat(path)
            stamp = f"{st.st_size}|{st.st_mtime_ns}"
        except OSError:  # gone since the scan: decoding reports it as unreadable
            stamp = "missing"
        h.update(f"|{path}|{stamp}".encode())
    return h.hexdigest()[:20]


def _decode_into(images: _RowWriter | None, i: int, path: str, size: int) -> tuple[str, str]:
    """Decode file ``i`` into row ``i`` of ``images`` (or only check it when ``images`` is None)."""
    try:
        data = Path(path).read_bytes()
    except OSError as err:
        return f"unreadable: {err.strerror}", ""
    digest = hashlib.blake2b(data, digest_size=16).hexdigest()
    try:
        if images is None:
            load_rgb(path)
        else:
            images.write(i, load_resized(path, size).transpose(2, 0, 1))
    except BadImageError as err:
        return str(err), digest
    return "", digest


def _decode_all(images: _RowWriter | None, paths: pd.Series, size: int, workers: int | None,
                what: str) -> list[tuple[str, str]]:
    """(error, digest) of every file, decoded by threads: PIL releases the GIL while decoding and resizing,
    so threads use every core without copying arrays. Files are handed out in chunks, because
    ``ThreadPoolExecutor.map`` queues a task per item at once (about 2 kB each: 200 MB for 100k files)."""
    paths, results = list(paths), []
    chunk = min(4096, max(256, len(paths) // 20))
    with ThreadPoolExecutor(workers or os.cpu_count() or 1) as pool, progress(what, len(paths)) as advance:
        for start in range(0, len(paths), chunk):
            part = range(start, min(start + chunk, len(paths)))
            results += pool.map(lambda i: _decode_into(images, i, paths[i], size), part)
            advance(len(part))
    return results


def validate(paths: pd.Series, workers: int | None = None) -> DecodedImages:
    """Decode every file once without keeping pixels (the streaming path), to refuse bad files up front."""
    results = _decode_all(None, paths, 0, workers, f"checking {len(paths):,} images")
    return DecodedImages(None, pd.Series([r[0] for r in results]), pd.Series([r[1] for r in results]), None)


def _reserve(path: Path, size: int, what: str, remedy: str) -> None:
    """Check that ``size`` bytes fit where ``path`` will be written, then reserve them (``what`` names the
    file and its cache folder for the message).

    Without this a full disk shows up as ENOSPC halfway through, or, for a memory-mapped file whose pages
    the disk cannot back, as SIGBUS: the process dies with no message. ``path`` may already exist (a
    sparse memory map); reserving allocates its blocks.
    """
    free = shutil.disk_usage(path.parent).free
    have = path.stat().st_blocks * 512 if path.exists() else 0
    if free + have < size:
        raise DataError(f"Not enough disk space for {what}: it needs {size / 1e6:,.1f} MB and "
                        f"{free / 1e6:,.1f} MB are free. Free some space, or {remedy}.")
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        os.posix_fallocate(fd, 0, size)
    except OSError as err:
        if err.errno == errno.ENOSPC:
            raise DataError(f"Disk full while reserving {size / 1e6:,.1f} MB for {what}: "
                            f"free some space, or {remedy}.") from None
        if err.errno not in (errno.EOPNOTSUPP, errno.EINVAL):  # a filesystem that cannot reserve: checked above
            raise
    finally:
        os.close(fd)


class _RowWriter:
    """Rows of a new ``.npy`` file (header written, disk space reserved), written with ``os.pwrite``.

    A writable memory map would do the same, but every page written stays in the process's resident
    memory until the map is closed (the whole file by the end of the build); ``pwrite`` leaves the
    written pages to the operating system's page cache, so the process holds one row per thread.
    """

    def __init__(self, path: Path, shape: tuple[int, ...], dtype, what: str, remedy: str):
        dtype = np.dtype(dtype)
        self.row_bytes = int(np.prod(shape[1:])) * dtype.itemsize
        with open(path, "wb") as handle:
            np.lib.format.write_array_header_1_0(handle, {"descr": np.lib.format.dtype_to_descr(dtype),
                                                          "fortran_order": False, "shape": tuple(shape)})
            self.offset = handle.tell()
            handle.truncate(self.offset + shape[0] * self.row_bytes)  # unwritten rows read as zeros
        _reserve(path, self.offset + shape[0] * self.row_bytes, what, remedy)
        self.fd = os.open(path, os.O_WRONLY)

    def write(self, row: int, data: np.ndarray) -> None:
        data = np.ascontiguousarray(data)
        if os.pwrite(self.fd, data, self.offset + row * self.row_bytes) != self.row_bytes:  # only on a full disk
            raise OSError(errno.ENOSPC, "short write")

    def close(self) -> None:
        os.close(self.fd)


def build(paths: pd.Series, image_size: int, folder: Path, workers: int | None = None) -> None:
    """Decode ``paths`` into ``folder``, created atomically."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    try:
        with temporary_sibling(folder) as tmp:
            n = len(paths)
            images = _RowWriter(tmp / "images.npy", (n, 3, image_size, image_size), np.uint8, f"the decoded cache "
                                f"of {n} images at {image_size} px in {folder.parent}", "set data.cache_dir=<a folder "
                                "on a larger disk> or data.decoded_cache=false")
            try:
                results = _decode_all(images, paths, image_size, workers,
                                      f"decoding {n:,} images at {image_size} px into {folder}")
            finally:
                images.close()
            meta = pd.DataFrame({"path": list(paths), "error": [r[0] for r in results],
                                 "digest": [r[1] for r in results]})
            meta.to_parquet(tmp / "meta.parquet", index=False)
    except OSError as err:
        if err.errno != errno.ENOSPC:
            raise
        raise DataError(f"Disk full while writing the decoded cache in {folder.parent}: free some space, or set "
                        "data.cache_dir=<a folder on a larger disk> or data.decoded_cache=false.") from None


def load_or_build(paths: pd.Series, image_size: int, cache_dir: str | Path, workers: int | None = None) -> DecodedImages:
    """The decoded images of ``paths`` at ``image_size``, building the cache on first use."""
    folder = Path(cache_dir) / "decoded" / f"{image_size}px-{fingerprint(paths, image_size)}"
    if not (folder / "meta.parquet").exists():
        try:
            folder.parent.mkdir(parents=True, exist_ok=True)
            remove_orphans(folder.parent)
        except PermissionError as err:
            raise DataError(f"Cannot write the decoded cache in {folder.parent} ({err.strerror}): set "
                            "data.cache_dir=<a writable folder>, or data.decoded_cache=false.") from None
        with FileLock(f"{folder}.lock"):  # parallel sweep jobs: one builds, the others wait and reuse it
            if not (folder / "meta.parquet").exists():
                build(paths, image_size, folder, workers)
    meta = pd.read_parquet(folder / "meta.parquet")
    images = np.load(folder / "images.npy", mmap_mode="r")
    return DecodedImages(images, meta["error"].fillna(""), meta["digest"].fillna(""), folder)


def load_or_build_features(decoded: DecodedImages, key: str, extract, batch_size: int = 256) -> np.ndarray:
    """Backbone features of every decoded image, computed once per (decoded cache, backbone key).

    ``extract`` maps a float batch in [0, 1] (B x 3 x H x W) to features (B x D, or B x C x h x w before a
    conv head such as SqueezeNet's). A frozen backbone gives the same features every epoch, fold and run,
    so only the head needs to train on them.
    """
    path = decoded.folder / f"features-{key}.npy"
    remove_orphans(decoded.folder)
    with FileLock(f"{path}.lock"):
        if not path.exists():
            _build_features(decoded, path, extract, batch_size)
    return np.load(path, mmap_mode="r")


def _build_features(decoded: DecodedImages, path: Path, extract, batch_size: int) -> None:
    """Features batch by batch into a temporary file renamed into place: images are read with a RowReader
    and features written with a _RowWriter, so memory holds one batch whatever the dataset's size. Rows of
    undecodable images stay zero."""
    import torch

    from maskdet.data.augment import to_float

    valid = np.flatnonzero(decoded.errors.to_numpy() == "")
    reader, out = RowReader(decoded.images), None
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}-", dir=decoded.folder)  # the name remove_orphans expects
    os.close(fd)
    try:
        try:
            with progress(f"computing backbone features of {len(valid):,} images", len(valid)) as advance, \
                    torch.inference_mode():
                for start in range(0, len(valid), batch_size):
                    rows = valid[start:start + batch_size]
                    features = extract(to_float(torch.from_numpy(reader.read(rows)))).float().cpu().numpy()
                    if out is None:  # the width is known from the first batch
                        out = _RowWriter(Path(tmp), (len(decoded.errors), *features.shape[1:]), np.float32,
                                         f"the backbone features {path}", "set data.cache_dir=<a folder on a "
                                         "larger disk> or data.feature_cache=false")
                    for row, feature in zip(rows, features):
                        out.write(int(row), feature)
                    advance(len(rows))
        finally:
            if out is not None:
                out.close()
        os.replace(tmp, path)  # atomic: a reader sees the old state or the whole file
    finally:
        Path(tmp).unlink(missing_ok=True)


class RowReader:
    """Rows of a cached ``.npy`` array, read from the file per batch (``os.preadv``, in file order).

    For splits larger than the memory budget (``data.cache_memory_gb``): the process holds one batch, and
    the operating system's page cache keeps whatever fits, shared by every process reading the same cache
    (DDP ranks, parallel sweep jobs). A memory map would serve the same bytes, but its pages count as the
    process's own resident memory and make the bound invisible; ``preadv`` copies straight into the batch.
    """

    def __init__(self, array: np.memmap):
        self.path, self.offset = str(array.filename), int(array.offset)
        self.row_shape, self.dtype = tuple(array.shape[1:]), array.dtype
        self.row_bytes = int(np.prod(self.row_shape)) * self.dtype.itemsize
        self._fd: int | None = None
        self._pid: int | None = None

    def __getstate__(self) -> dict:  # DataLoader workers and spawned processes open their own descriptor
        return {**self.__dict__, "_fd": None, "_pid": None}

    def _descriptor(self) -> int:
        if self._fd is None or self._pid != os.getpid():
            self._fd, self._pid = os.open(self.path, os.O_RDONLY), os.getpid()
        return self._fd

    def read(self, rows: np.ndarray) -> np.ndarray:
        """``array[rows]`` in the order given, read in file order."""
        rows = np.asarray(rows, dtype=np.int64)
        out = np.empty((len(rows), *self.row_shape), self.dtype)
        fd = self._descriptor()
        for i in np.argsort(rows, kind="stable"):
            got = os.preadv(fd, [out[i]], self.offset + int(rows[i]) * self.row_bytes)
            if got != self.row_bytes:
                raise DataError(f"{self.path} ended early at row {rows[i]}: the cache was cut short; delete "
                                "its folder so that it is rebuilt.")
        return out

    def __del__(self):
        if self._fd is not None and self._pid == os.getpid():
            os.close(self._fd)


def memory_budget(cache_memory_gb: float | None) -> int:
    """Bytes a split may take in RAM: ``cache_memory_gb``, or half the memory available now."""
    if cache_memory_gb is None:
        import psutil

        return psutil.virtual_memory().available // 2
    return int(cache_memory_gb * 2**30)
