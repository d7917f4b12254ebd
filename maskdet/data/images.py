"""Decode one image file safely into RGB, or say exactly why it cannot be used.

Every loader in maskdet (the decoded cache, the streaming path, predict) goes through ``load_rgb`` so a
file is accepted or refused for the same reason everywhere.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
MIN_SIDE = 8  # smaller images carry no usable face; they are skipped and reported
MAX_PIXELS = 64_000_000  # larger images are treated as decompression bombs


class BadImageError(ValueError):
    """A file that cannot be used as a training image; the message says why."""


def is_image_name(path: str | Path) -> bool:
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS


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


def load_rgb(path: str | Path) -> Image.Image:
    """Open ``path`` fully decoded as RGB; raise ``BadImageError`` with the reason otherwise."""
    path = Path(path)
    try:
        if path.stat().st_size == 0:
            raise BadImageError("empty file (0 bytes)")
        # The size is checked before decoding (MAX_PIXELS is below PIL's own warning threshold), so no
        # global warnings filter is needed: those are not thread-safe and the cache decodes in threads.
        with Image.open(path) as img:
            width, height = img.size
            if width * height > MAX_PIXELS:
                raise BadImageError(f"{width}x{height} pixels is above the {MAX_PIXELS:,} pixel limit (decompression bomb?)")
            if min(width, height) < MIN_SIDE:
                raise BadImageError(f"{width}x{height} pixels is too small (minimum side {MIN_SIDE})")
            img.load()
            return _to_rgb(img)
    except BadImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise BadImageError(f"decompression bomb refused: {err}") from None
    except UnidentifiedImageError:
        raise BadImageError("not a readable image (unknown or corrupt format)") from None
    except (OSError, SyntaxError, ValueError) as err:
        raise BadImageError(f"corrupt or truncated image: {err}") from None


def load_resized(path: str | Path, size: int) -> np.ndarray:
    """Decode and resize to ``size x size`` with PIL's antialiased bilinear filter; return uint8 HWC.

    This is exactly what the seeds' ``Resize((s, s))`` did on PIL images, so the cached tensors equal the
    seed-style path's input.
    """
    img = load_rgb(path)
    if img.size != (size, size):
        img = img.resize((size, size), Image.BILINEAR)
    return np.asarray(img, dtype=np.uint8)
