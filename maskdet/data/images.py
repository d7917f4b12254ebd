"""Decide whether a path is a usable image file and decode it into RGB, or say exactly why not.

Every reader (the three dataset sources and predict's input listing) asks ``path_problem`` whether a path
may be read, and every loader (the decoded cache, the streaming path, predict) decodes with ``load_rgb``,
so a file is accepted or refused for the same reason everywhere.

File names that are not valid UTF-8 (on Linux Python holds them as ``str`` with surrogate escapes) are
refused with a reason rather than carried along: every output that names a file (CSV, JSON, parquet,
TensorBoard) would otherwise need its own escaping. Reports name such a file by ``display_path``, its
bytes with the invalid ones written as ``\\xNN``.
"""

from __future__ import annotations

import os
import stat
import struct
import zlib
from collections.abc import Collection
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
MIN_SIDE = 8  # smaller images carry no usable face; they are skipped and reported
MAX_PIXELS = 64_000_000  # larger images are treated as decompression bombs
# Pillow's default, restated because the refusal of truncated files depends on it: with True, a cut
# JPEG or PNG would decode with grey or black rows instead of raising.
ImageFile.LOAD_TRUNCATED_IMAGES = False


class BadImageError(ValueError):
    """A file that cannot be used as a training image; the message says why."""


def is_image_name(path: str | Path) -> bool:
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS


def is_utf8(path: str | Path) -> bool:
    try:
        str(path).encode("utf-8")
    except UnicodeEncodeError:  # a name with bytes that are not UTF-8, held as surrogate escapes
        return False
    return True


def display_path(path: str | Path) -> str:
    """``path`` as text that any writer accepts: invalid name bytes are shown as ``\\xNN``."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def skip(path: str | Path, reason: str) -> dict:
    """One entry of a skipped list (data_report.json, skipped.csv)."""
    return {"path": display_path(path), "reason": reason}


def path_problem(path: Path, root: Path | None = None, parent_inside: bool = False,
                 extensions: Collection[str] = IMAGE_EXTENSIONS) -> str | None:
    """Why ``path`` cannot be read as an image file, or None when it can.

    The one check shared by every reader and by predict. ``root`` (resolved) is the folder the files must
    stay in: a symbolic link or a listed ``../x.jpg`` that leads out of it is refused, so a dataset cannot
    make maskdet read files elsewhere on the machine. ``parent_inside``: the caller walked to ``path``
    without following links, so only ``path`` itself can lead out (saves resolving every file of a scan).
    """
    if not is_utf8(path):
        return "file name is not valid UTF-8; rename it (for example with convmv) to use it"
    try:
        link = path.is_symlink()
        if link and not path.exists():
            return "broken symbolic link (its target does not exist)"
        if root is not None and (link or not parent_inside):
            target = path.resolve()
            if not target.is_relative_to(root):
                return f"resolves to {display_path(target)}, outside {display_path(root)}; only files inside it are read"
        mode = path.stat().st_mode
    except FileNotFoundError:
        return "file not found"
    except (OSError, ValueError, RuntimeError) as err:  # a name too long, a NUL byte, a symlink loop
        return f"cannot be checked: {err}"
    if stat.S_ISDIR(mode):
        return "a folder, not a file"
    if not stat.S_ISREG(mode):
        return "not a regular file (device, pipe or socket)"
    if path.suffix.lower() not in extensions:  # predict detect=true also reads videos
        kind = "an image file" if extensions == IMAGE_EXTENSIONS else "an image or video file"
        return f"not {kind} (extension '{path.suffix}')"
    if path.name.startswith("."):
        return "hidden file (name starts with '.')"
    return None


def folder_problem(path: Path) -> str | None:
    """Why a sub-folder is not searched, or None when it is."""
    if not is_utf8(path):
        return "folder name is not valid UTF-8, not searched; rename it (for example with convmv) to use it"
    if path.is_symlink():
        return "symbolic link to a folder, not followed"
    if path.name.startswith("."):
        return "hidden folder (name starts with '.'), not searched"
    return None


def list_image_files(folder: Path, root: Path | None = None,
                     extensions: Collection[str] = IMAGE_EXTENSIONS) -> tuple[list[Path], list[dict]]:
    """Image files under ``folder`` (recursively, sorted) and every other entry with the reason it is skipped.

    ``folder`` must be inside ``root``; linked folders are not followed, so only linked files need resolving.
    """
    files, skipped = [], []

    def unreadable(err: OSError) -> None:  # os.walk would skip a folder it cannot list without a word
        skipped.append(skip(err.filename, f"folder cannot be read: {err.strerror}"))

    for dirpath, dirnames, filenames in os.walk(folder, onerror=unreadable):
        here = Path(dirpath)
        searched = []
        for name in sorted(dirnames):
            problem = folder_problem(here / name)
            if problem:
                skipped.append(skip(here / name, problem))
            else:
                searched.append(name)
        dirnames[:] = searched
        for name in sorted(filenames):
            problem = path_problem(here / name, root, parent_inside=True, extensions=extensions)
            if problem:
                skipped.append(skip(here / name, problem))
            else:
                files.append(here / name)
    return files, skipped


def _to_rgb(img: Image.Image) -> Image.Image:
    """Convert any PIL mode to 8-bit RGB (grayscale, CMYK, palette, alpha, 16-bit and float)."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        high = 65535.0 if img.mode.startswith("I;16") or arr.max() > 255 else 255.0
        img = Image.fromarray(np.clip(arr * (255.0 / high), 0, 255).astype(np.uint8), "L")
    if img.mode in ("P", "PA", "LA", "RGBA") or "transparency" in img.info:
        img = img.convert("RGBA")
        background = Image.new("RGBA", img.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, img)  # transparent pixels become white, not black
    return img.convert("RGB")


_ADAM7 = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2))
_PNG_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}


def _png_data_missing(handle) -> bool:
    """True when a PNG's image data inflates to fewer bytes than its header's size needs.

    Pillow fills the rows of such a file with black without complaint (libpng refuses it: "Not enough
    image data"), so the stream is inflated once more here, counting bytes without keeping them. Written
    by hand because Pillow exposes no such check; a file cut inside a chunk already fails ``load()``.
    """
    handle.seek(8)  # the signature was checked by Image.open
    inflate, have, need = zlib.decompressobj(), 0, None
    while True:
        head = handle.read(8)
        if len(head) < 8:
            break
        length, kind = struct.unpack(">I4s", head)
        data = handle.read(length)
        handle.seek(4, os.SEEK_CUR)  # CRC
        if kind == b"IHDR":
            width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", data[:13])
            bits = depth * _PNG_CHANNELS.get(colour, 4)
            passes = _ADAM7 if interlace else ((0, 0, 1, 1),)
            need = 0
            for x0, y0, dx, dy in passes:
                cols, rows = max(0, -(-(width - x0) // dx)), max(0, -(-(height - y0) // dy))
                if cols and rows:
                    need += rows * (1 + -(-cols * bits // 8))  # one filter byte per row
        elif kind == b"IDAT":
            while data and have < (need or 0):
                have += len(inflate.decompress(data, 1 << 20))
                data = inflate.unconsumed_tail
        elif kind == b"IEND":
            break
    return need is not None and have < need


_SIGNATURES = {b"\xff\xd8\xff": "JPEG", b"\x89PNG\r\n\x1a\n": "PNG", b"GIF8": "GIF", b"BM": "BMP",
               b"II*\x00": "TIFF", b"MM\x00*": "TIFF", b"RIFF": "WEBP"}


def _signature(path: Path) -> str | None:
    """The format a file's first bytes announce, if any."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(8)
    except OSError:
        return None
    return next((kind for magic, kind in _SIGNATURES.items() if head.startswith(magic)), None)


def load_rgb(path: str | Path) -> Image.Image:
    """Open ``path`` fully decoded as RGB, turned upright as its EXIF orientation says (as a photo viewer
    shows it); raise ``BadImageError`` with the reason otherwise."""
    path = Path(path)
    try:
        handle = open(path, "rb")
    except OSError as err:
        raise BadImageError(f"cannot be read: {err.strerror or err}") from None
    try:
        with handle:
            if os.fstat(handle.fileno()).st_size == 0:
                raise BadImageError("empty file (0 bytes)")
            # The size is checked before decoding (MAX_PIXELS is below PIL's own warning threshold), so no
            # global warnings filter is needed: those are not thread-safe and the cache decodes in threads.
            with Image.open(handle) as img:
                width, height = img.size
                if width * height > MAX_PIXELS:
                    raise BadImageError(f"{width}x{height} pixels is above the {MAX_PIXELS:,} pixel limit (decompression bomb?)")
                if min(width, height) < MIN_SIDE:
                    raise BadImageError(f"{width}x{height} pixels is too small (minimum side {MIN_SIDE})")
                img.load()
                if img.format == "PNG" and _png_data_missing(handle):
                    raise BadImageError("truncated image: the PNG's image data stops before its last row")
                ImageOps.exif_transpose(img, in_place=True)
                return _to_rgb(img)
    except BadImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise BadImageError(f"decompression bomb refused: {err}") from None
    except UnidentifiedImageError:
        kind = _signature(path)
        if kind:  # a file cut inside its header is not identified; say what it was
            raise BadImageError(f"corrupt or truncated image: it starts as a {kind} file but its header is "
                                "incomplete or damaged") from None
        raise BadImageError("not a readable image (unknown or corrupt format)") from None
    except (OSError, SyntaxError, ValueError, struct.error, zlib.error) as err:
        raise BadImageError(f"corrupt or truncated image: {err}") from None


def load_resized(path: str | Path, size: int) -> np.ndarray:
    """Decode and resize to ``size x size`` with PIL's antialiased bilinear filter; return uint8 HWC.

    This is exactly what both source studies' ``Resize((s, s))`` did on PIL images, so the cached tensors
    equal the per-item PIL path's input.
    """
    img = load_rgb(path)
    if img.size != (size, size):
        img = img.resize((size, size), Image.BILINEAR)
    return np.asarray(img, dtype=np.uint8)
