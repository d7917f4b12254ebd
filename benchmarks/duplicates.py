"""The duplicate finder (maskdet.data.duplicates): recall per kind of copy, false pairs, fingerprint cost.

    python benchmarks/duplicates.py [--quick] [--copies 300] [--cache-dir .cache/maskdet]
    python benchmarks/duplicates.py --speed [--repeat 3]

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

``--speed``: the cost of finding the near pairs of the 8,605 embedded images, in one process, ``--repeat``
times interleaved, medians: the comparison before the pair cache (one int32 distance matrix per 256 rows,
``near_pairs_v2`` below), ``near_pairs`` now (cache-sized uint8 tiles), and what a later run or fold pays:
``load_or_compute`` reading the cached fingerprints and pairs (a fresh cache folder under ``--cache-dir``).
"""

from __future__ import annotations

import argparse
import hashlib
import io
import shutil
import statistics
import time
from pathlib import Path

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


def near_pairs_v2(hashes: np.ndarray, thumbs: np.ndarray, max_bits: int = dups.HAMMING_BITS,
                  min_correlation: float = dups.MIN_CORRELATION, chunk: int = 256) -> np.ndarray:
    """near_pairs as of FINGERPRINT_VERSION 2's first commit (ad868ee), for the speed ratio."""
    n, k = hashes.shape[:2]
    rgb = thumbs.reshape(n, k, -1, 3).astype(np.float32)
    is_grey = np.abs(np.diff(rgb[:, 0], axis=-1)).mean(axis=(1, 2)) < dups.GREY_SPREAD
    colour, grey = dups._unit(thumbs), dups._unit(rgb @ dups._LUMA)
    flat = hashes.reshape(n * k, -1)
    found = [np.zeros((0, 2), dtype=np.int64)]
    for start in range(0, n, chunk):
        block = hashes[start:start + chunk, 0]
        distance = np.zeros((len(block), n * k), dtype=np.int32)
        for word in range(hashes.shape[2]):
            distance += np.bitwise_count(block[:, word, None] ^ flat[None, :, word])
        i, jv = np.nonzero(distance <= max_bits)
        bits = distance[i, jv]
        i, j, v = i + start, jv // k, jv % k
        keep = (i < j) | ((v > 0) & (i != j))
        i, j, v, bits = i[keep], j[keep], v[keep], bits[keep]
        either_grey = is_grey[i] | is_grey[j]
        confirmed = np.where(either_grey, (bits <= dups.GREY_BITS)
                             & (np.einsum("ij,ij->i", grey[i, 0], grey[j, v]) >= dups.MIN_GREY_CORRELATION),
                             np.einsum("ij,ij->i", colour[i, 0], colour[j, v]) >= min_correlation)
        found.append(np.stack([np.minimum(i, j)[confirmed], np.maximum(i, j)[confirmed]], axis=1))
    return np.unique(np.concatenate(found), axis=0)


def speed(cache_dir: str, repeat: int) -> None:
    """Seconds to find the embedded dataset's near pairs: before, now, and read from the cache."""
    index = read_synthetic(cache_dir).index.sort_values("path").reset_index(drop=True)
    digests = index["path"].map(lambda p: hashlib.sha256(Path(p).read_bytes()).hexdigest())
    cache = Path(cache_dir) / "speed-benchmark"
    shutil.rmtree(cache, ignore_errors=True)
    start = time.perf_counter()
    hashes, thumbs, _ = dups.load_or_compute(index["path"], digests, cache)  # fingerprints and pairs, computed
    print(f"{len(index)} images: fingerprints + pairs computed in {time.perf_counter() - start:.1f} s "
          f"(K = {hashes.shape[1]} variants)", flush=True)
    times: dict[str, list[float]] = {"before (ad868ee)": [], "near_pairs now": [], "cached (a later run)": []}
    for _ in range(repeat):
        for name, work in (("before (ad868ee)", lambda: near_pairs_v2(hashes, thumbs)),
                           ("near_pairs now", lambda: dups.near_pairs(hashes, thumbs)),
                           ("cached (a later run)", lambda: dups.load_or_compute(index["path"], digests, cache))):
            start = time.perf_counter()
            work()
            times[name].append(time.perf_counter() - start)
    assert np.array_equal(near_pairs_v2(hashes, thumbs), dups.near_pairs(hashes, thumbs))
    before = statistics.median(times["before (ad868ee)"])
    for name, seconds in times.items():
        print(f"{name:22s} median {statistics.median(seconds):6.2f} s  (x{before / statistics.median(seconds):.1f} "
              f"faster than before; runs: {', '.join(f'{t:.2f}' for t in seconds)})", flush=True)
    shutil.rmtree(cache, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--copies", type=int, default=None)
    parser.add_argument("--cache-dir", default=".cache/maskdet")
    parser.add_argument("--speed", action="store_true", help="time finding the near pairs (see above)")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    if args.speed:
        speed(args.cache_dir, args.repeat)
        return
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
