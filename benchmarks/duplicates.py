"""The duplicate finder (maskdet.data.duplicates): recall per kind of copy, false pairs, fingerprint cost.

    python benchmarks/duplicates.py [--quick] [--copies 300] [--cache-dir .cache/maskdet]

Copies: ``--copies`` images drawn (seed 0) from the embedded default dataset (8,605 images, generated into
the cache folder on first use) and from 17 scikit-image photographs (astronaut, coffee, rocket, ...) are
transformed, saved as JPEG quality 90 and read back, then searched for among all originals with the
finder's own ``near_pairs``. A copy is caught when it is paired with its original; a wrong pair is one with
any other image. Kinds: ``flip`` (horizontal), ``crop`` (a centred crop keeping 80-100 % of the area, so
at least 89.4 % of each side), ``crop_offset`` (the same area at a random place), ``rotate`` (-10..10
degrees about the centre, black corners, as PIL and torchvision rotate), ``grey``, and the kinds the finder
already caught (``jpeg`` quality 30-95, ``resize`` x0.25-1.5, ``brightness`` x0.9-1.1).

False pairs: all pairs among the 8,605 embedded images (all different drawings), among scikit-image's
``lfw_subset()`` (100 faces of 100 people, 25x25 grey, then 100 crops without a face) and among the
photographs. Fingerprint cost: version 1 (one pHash and one thumbnail) against the current fingerprint on
the same images, one thread, one process, best of 3, as a ratio. ``--quick``: 60 copies, 2,000 embedded
images.
"""

from __future__ import annotations

import argparse
import io
import time

import imagehash
import numpy as np
from PIL import Image, ImageEnhance, ImageOps
from skimage import data as samples

from maskdet.data import duplicates as dups
from maskdet.data.sources import read_synthetic

PHOTOS = ("astronaut", "coffee", "rocket", "chelsea", "hubble_deep_field", "immunohistochemistry", "retina",
          "camera", "coins", "brick", "grass", "gravel", "horse", "page", "text", "clock", "moon")


def crop(image: Image.Image, rng: np.random.Generator, centred: bool) -> Image.Image:
    side = np.sqrt(rng.uniform(0.8, 1.0))
    w, h = image.size
    cw, ch = round(w * side), round(h * side)
    x = (w - cw) // 2 if centred else int(rng.integers(0, w - cw + 1))
    y = (h - ch) // 2 if centred else int(rng.integers(0, h - ch + 1))
    return image.crop((x, y, x + cw, y + ch))


KINDS = {
    "flip": lambda im, rng: ImageOps.mirror(im),
    "crop": lambda im, rng: crop(im, rng, centred=True),
    "crop_offset": lambda im, rng: crop(im, rng, centred=False),
    "rotate": lambda im, rng: im.rotate(rng.uniform(-10, 10), Image.BILINEAR),
    "grey": lambda im, rng: ImageOps.grayscale(im),
    "jpeg": lambda im, rng: im,  # quality drawn below
    "resize": lambda im, rng: im.resize([max(8, round(s * rng.uniform(0.25, 1.5))) for s in im.size], Image.BILINEAR),
    "brightness": lambda im, rng: ImageEnhance.Brightness(im).enhance(rng.uniform(0.9, 1.1)),
}


def as_image(array: np.ndarray) -> Image.Image:
    array = np.asarray(array)
    if array.dtype != np.uint8:
        array = np.clip(array * 255 if array.max() <= 1 else array, 0, 255).astype(np.uint8)
    if array.ndim == 3 and array.shape[2] == 4:
        array = array[..., :3]
    return Image.fromarray(array).convert("RGB")


def saved(image: Image.Image, quality: int = 90) -> Image.Image:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")


def stack(images: list[Image.Image]) -> tuple[np.ndarray, np.ndarray]:
    found = [dups.fingerprint(im) for im in images]
    return np.stack([h for h, _ in found]), np.stack([t for _, t in found])


def false_pairs(hashes: np.ndarray, thumbs: np.ndarray) -> int:
    return len(dups.near_pairs(hashes, thumbs))


def recall(name: str, originals: list[Image.Image], hashes: np.ndarray, thumbs: np.ndarray, copies: int,
           seed: int) -> list[dict]:
    rows = []
    for k, (kind, make) in enumerate(KINDS.items()):
        rng = np.random.default_rng([seed, k])
        chosen = rng.choice(len(originals), copies, replace=copies > len(originals))
        quality = rng.integers(30, 96, copies) if kind == "jpeg" else np.full(copies, 90)
        made = [saved(make(originals[i], rng), int(q)) for i, q in zip(chosen, quality)]
        ch, ct = stack(made)
        pairs = dups.near_pairs(np.concatenate([hashes, ch]), np.concatenate([thumbs, ct]))
        n = len(originals)
        pairs = pairs[pairs[:, 1] >= n]  # pairs with a copy (pairs among originals are counted separately)
        source = np.concatenate([np.arange(n), chosen])  # the original each row stands for
        right = source[pairs[:, 0]] == source[pairs[:, 1]]
        caught = len(set(pairs[right, 1]))
        rows.append({"set": name, "kind": kind, "copies": copies, "caught": caught,
                     "recall": caught / copies, "wrong_pairs": int((~right).sum())})
        print(f"{name:9s} {kind:12s} {copies:5d} copies  {caught:5d} caught  recall {caught / copies:.3f}  "
              f"wrong pairs {int((~right).sum())}", flush=True)
    return rows


def fingerprint_v1(image: Image.Image) -> tuple[np.ndarray, np.ndarray]:
    """The fingerprint before variants (FINGERPRINT_VERSION 1), for the cost ratio."""
    small = image.resize((64, 64), Image.BILINEAR)
    bits = np.packbits(imagehash.phash(small, hash_size=16).hash.ravel())
    thumb = np.asarray(small.resize((16, 16), Image.BILINEAR), dtype=np.uint8).ravel()
    return bits.view(">u8").astype(np.uint64), thumb


def cost(paths: list[str]) -> tuple[float, float]:
    """Seconds per image of decoding + fingerprint, version 1 and now (best of 3, interleaved)."""
    from maskdet.data.images import load_rgb

    best = {"v1": np.inf, "now": np.inf}
    for _ in range(3):
        for key, function in (("v1", fingerprint_v1), ("now", dups.fingerprint)):
            start = time.perf_counter()
            for path in paths:
                function(load_rgb(path))
            best[key] = min(best[key], (time.perf_counter() - start) / len(paths))
    return best["v1"], best["now"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--copies", type=int, default=None)
    parser.add_argument("--cache-dir", default=".cache/maskdet")
    args = parser.parse_args()
    copies = args.copies or (60 if args.quick else 300)

    paths = sorted(read_synthetic(args.cache_dir).index["path"])
    if args.quick:
        paths = [paths[i] for i in np.random.default_rng(0).choice(len(paths), 2000, replace=False)]
    v1, now = cost(paths[:300])
    print(f"fingerprint, decoding included, one thread: {v1 * 1e3:.2f} ms -> {now * 1e3:.2f} ms per image "
          f"(x{now / v1:.2f})", flush=True)
    embedded = [Image.open(p).convert("RGB") for p in paths]
    hashes, thumbs = stack(embedded)
    start = time.perf_counter()
    found = false_pairs(hashes, thumbs)
    print(f"embedded: {found} false pairs among {len(paths)} images ({time.perf_counter() - start:.1f} s to "
          "compare all pairs)", flush=True)
    lfw = [as_image(face) for face in samples.lfw_subset()]
    lh, lt = stack(lfw)
    print(f"LFW: {false_pairs(lh[:100], lt[:100])} false pairs among the 100 faces of 100 people, "
          f"{false_pairs(lh, lt)} among all 200 crops", flush=True)
    photos = [as_image(getattr(samples, name)()) for name in PHOTOS]
    ph, pt = stack(photos)
    print(f"photos: {false_pairs(ph, pt)} false pairs among {len(photos)}", flush=True)
    rows = recall("embedded", embedded, hashes, thumbs, copies, 0)
    rows += recall("photos", photos, ph, pt, max(copies // 5, 20), 1)
    print("\n| copy | set | copies | caught | recall | wrong pairs |\n|---|---|---:|---:|---:|---:|")
    for row in rows:
        print(f"| {row['kind']} | {row['set']} | {row['copies']} | {row['caught']} | {row['recall']:.3f} | "
              f"{row['wrong_pairs']} |")


if __name__ == "__main__":
    main()
