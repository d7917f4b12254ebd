"""The embedded default dataset: procedurally drawn face crops in the COMP6721 study's layout.

No face data can be downloaded here, so maskdet draws its own: class folders ``without_mask``,
``with_surgical_mask``, ``with_cloth_mask``, ``with_ffp2_mask`` holding JPEGs named
``[age]_[gender]_[race]_[datetime]_[n].jpg`` (UTKFace style). Skin tone comes from overlapping
race-dependent palettes, hair and face shape vary with gender and age; pose, scale, lighting, background,
blur and JPEG quality are random. The three mask kinds share colours (white surgical masks, white FFP2
cups, pale cloth masks) so that they are told apart by shape and texture (pleats, seam, valve, pattern),
not by one colour statistic. The ``bias`` knob weakens the evidence (contrast, blur, occlusion) for one
demographic group so that a bias audit has a known answer.

Two options make known answers for other audits. ``incorrect_wear`` adds a fifth class,
``mask_weared_incorrect`` (a surgical or cloth mask worn below the nose or on the chin, as in the Kaggle
face-mask detection set's class of that name). ``label_noise`` (a share) files that share of the images
under a wrong class folder and ``outliers`` (a count) adds images that are not faces at all, spread over the
class folders; what was planted is listed in ``<dataset>.planted.csv`` beside the dataset (path, given
label, true label, kind), never inside it, so that a label-issue finder can be scored against the truth.

Every image is drawn from its own RNG seeded by (seed, class, n): the same seed gives the same bytes.
With ``shared_faces=k`` (k > 1) one photograph is drawn under k mask classes, as MaskTheFace did with
UTKFace: face, background, pose, lighting and JPEG quality come from an RNG seeded by the face, only the
mask from the image's own RNG, and the copies share the ``[age]_[gender]_[race]_[datetime]`` name prefix.

    python -m maskdet.data.synthetic --out DIR [--per-class 100] [--seed 0] [--size 128]
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import os
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from filelock import FileLock
from PIL import Image, ImageDraw, ImageEnhance, ImageFilter

from maskdet.config import packaged_defaults
from maskdet.data.demographics import NAME_ATTRIBUTES
from maskdet.progress import progress
from maskdet.writing import remove_orphans, temporary_sibling

CLASSES = ("without_mask", "with_surgical_mask", "with_cloth_mask", "with_ffp2_mask")
INCORRECT = "mask_weared_incorrect"  # the optional fifth class (the Kaggle face-mask detection set's name)
NOT_A_FACE = "not_a_face"  # the true label of a planted outlier in planted.csv
DEFAULTS = packaged_defaults("data/synthetic.yaml")["source"]  # the generator's defaults: data/synthetic.yaml only
COMP6721_COUNTS = tuple(DEFAULTS["per_class"])  # the COMP6721 study's class counts (8,605 images)
GENERATOR_VERSION = 6  # bump when drawing changes, so cached datasets are regenerated

# Mean skin colour per UTKFace race code; the per-image spread (below) makes neighbours overlap.
_SKIN_MEANS = {0: (228, 190, 165), 1: (120, 82, 60), 2: (222, 186, 150), 3: (170, 122, 90), 4: (196, 150, 115)}
_SKIN_SPREAD = 22.0
_HAIR = [(25, 20, 18), (60, 40, 25), (110, 75, 40), (190, 150, 90), (140, 60, 30)]
_SURGICAL = [(165, 200, 228), (232, 236, 240), (185, 220, 200), (240, 200, 210), (45, 50, 60)]
_FFP2 = [(238, 238, 232), (245, 244, 236), (225, 228, 230), (236, 232, 205), (170, 200, 225)]


@dataclass(frozen=True)
class BiasKnob:
    """Weaker mask evidence for one group: ``attribute`` ("gender" or "race") equal to ``group`` (a code)."""

    attribute: str = DEFAULTS["bias"]["attribute"]
    group: int = DEFAULTS["bias"]["group"]
    strength: float = DEFAULTS["bias"]["strength"]  # 0 = off, 1 = strongest

    def applies(self, gender: int, race: int) -> bool:
        if self.strength <= 0:
            return False
        return {"gender": gender, "race": race}[self.attribute] == self.group


@dataclass(frozen=True)
class SyntheticSpec:
    per_class: tuple[int, ...] = COMP6721_COUNTS
    seed: int = DEFAULTS["seed"]
    size: int = DEFAULTS["size"]
    bias: BiasKnob = field(default_factory=BiasKnob)
    shared_faces: int = DEFAULTS["shared_faces"]  # k > 1: every face is drawn under k mask classes
    incorrect_wear: bool = DEFAULTS["incorrect_wear"]  # True: a fifth class, masks worn below the nose or on the chin
    label_noise: float = DEFAULTS["label_noise"]  # this share of images filed under a wrong class folder
    outliers: int = DEFAULTS["outliers"]  # this many images that are not faces, spread over the class folders

    @property
    def classes(self) -> tuple[str, ...]:
        return (*CLASSES, INCORRECT) if self.incorrect_wear else CLASSES

    def key(self) -> str:
        fields = asdict(self)
        for name, off in (("shared_faces", 1), ("incorrect_wear", False), ("label_noise", 0.0), ("outliers", 0)):
            if fields[name] == off:  # off: the key (and so the cached dataset) of every older spec stays
                del fields[name]
        text = json.dumps({"v": GENERATOR_VERSION, **fields}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def make_spec(
    per_class: int | Sequence[int] = COMP6721_COUNTS,
    seed: int = SyntheticSpec.seed,
    size: int = SyntheticSpec.size,
    bias: dict | BiasKnob | None = None,
    shared_faces: int | None = SyntheticSpec.shared_faces,
    incorrect_wear: bool = SyntheticSpec.incorrect_wear,
    label_noise: float = SyntheticSpec.label_noise,
    outliers: int = SyntheticSpec.outliers,
) -> SyntheticSpec:
    """Build a spec from config values: ``per_class`` is one int for every class or one per class (with
    ``incorrect_wear``, four counts give the fifth class their mean, so the defaults still apply)."""
    if not isinstance(incorrect_wear, bool):
        raise ValueError(f"data.source.incorrect_wear must be true or false, got {incorrect_wear!r}.")
    classes = (*CLASSES, INCORRECT) if incorrect_wear else CLASSES
    counts = (int(per_class),) * len(classes) if isinstance(per_class, int) else tuple(int(c) for c in per_class)
    if incorrect_wear and len(counts) == len(CLASSES):
        counts = (*counts, round(sum(counts) / len(counts)))
    if len(counts) != len(classes) or min(counts) < 1:
        raise ValueError(
            f"data.source.per_class must be a positive int or {len(classes)} positive ints "
            f"(one per class: {', '.join(classes)}), got {per_class!r}."
        )
    if isinstance(label_noise, bool) or not isinstance(label_noise, int | float) or not 0 <= label_noise < 0.5:
        raise ValueError(f"data.source.label_noise must be a share from 0 (off) to below 0.5 (the share of images "
                         f"filed under a wrong class), got {label_noise!r}.")
    if isinstance(outliers, bool) or not isinstance(outliers, int) or outliers < 0:
        raise ValueError(f"data.source.outliers must be a whole number of non-face images (0: off), got {outliers!r}.")
    if size < 32:
        raise ValueError(f"data.source.size must be at least 32 pixels, got {size}.")
    knob = bias if isinstance(bias, BiasKnob) else BiasKnob(**(dict(bias) if bias else {}))
    if knob.attribute not in NAME_ATTRIBUTES:
        raise ValueError(f"data.source.bias.attribute must be 'gender' or 'race', got {knob.attribute!r}.")
    shared = 1 if shared_faces in (None, 0) else shared_faces
    if isinstance(shared, bool) or not isinstance(shared, int) or not 1 <= shared <= len(CLASSES):
        raise ValueError(f"data.source.shared_faces must be a whole number from 1 (off) to {len(CLASSES)} (each "
                         f"face under that many mask classes), got {shared_faces!r}.")
    if label_noise and shared > 1:
        raise ValueError("data.source.label_noise cannot be combined with data.source.shared_faces > 1: a face's copies "
                         "share one file name, so a copy filed under another class would overwrite that class's copy.")
    return SyntheticSpec(per_class=counts, seed=int(seed), size=int(size), bias=knob, shared_faces=shared,
                         incorrect_wear=incorrect_wear, label_noise=float(label_noise), outliers=int(outliers))


# ----------------------------------------------------------------------------------------------
# drawing


def _jitter(rng: np.random.Generator, colour: Sequence[int], spread: float) -> tuple[int, int, int]:
    return tuple(int(np.clip(c + rng.normal(0, spread), 0, 255)) for c in colour)


def _demographics(rng: np.random.Generator) -> tuple[int, int, int]:
    race = int(rng.choice(5, p=[0.42, 0.19, 0.15, 0.17, 0.07]))
    gender = int(rng.random() < 0.48)
    age = int(np.clip(rng.choice([rng.integers(1, 13), rng.normal(35, 14), rng.integers(60, 90)], p=[0.1, 0.75, 0.15]), 1, 95))
    return age, gender, race


def _background(rng: np.random.Generator, size: int) -> Image.Image:
    top = np.array(_jitter(rng, rng.integers(30, 225, 3), 0), dtype=np.float32)
    bottom = np.array(_jitter(rng, rng.integers(30, 225, 3), 0), dtype=np.float32)
    t = np.linspace(0, 1, size, dtype=np.float32)[:, None, None]
    img = top * (1 - t) + bottom * t + rng.normal(0, 6, (size, size, 3)).astype(np.float32)
    img = np.broadcast_to(img, (size, size, 3))
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))


def _apart(skin: Sequence[int], colour: Sequence[int], min_distance: float = 90.0) -> tuple[int, int, int]:
    """Move a mask colour away from the skin colour until they differ by ``min_distance`` (RGB), the same
    rule for every skin tone, so no group's masks blend into the face more often than another's."""
    diff = np.asarray(colour, dtype=float) - np.asarray(skin, dtype=float)
    distance = float(np.linalg.norm(diff))
    if distance >= min_distance:
        return tuple(int(c) for c in colour)
    direction = diff / distance if distance > 0 else np.ones(3) / np.sqrt(3)
    moved = np.asarray(skin, dtype=float) + direction * min_distance
    if moved.min() < 0 or moved.max() > 255:  # no room on this side: go the other way
        moved = np.asarray(skin, dtype=float) - direction * min_distance
    return tuple(int(c) for c in np.clip(moved, 0, 255))


def _edge(colour: Sequence[int]) -> tuple[int, int, int]:
    """A mask's outline: darker for light masks, lighter for dark ones, whatever the skin behind it, so
    that a mask's outline is equally visible on every skin tone (no bias unless the knob plants one)."""
    light = sum(colour) > 300
    return tuple(int(c * 0.6) if light else int(c + (255 - c) * 0.45) for c in colour)


def _ear_loops(d, cx, cy, fw, fh, top, bottom, colour, line_w) -> None:
    for side in (-1, 1):
        x = cx + side * fw * 0.54
        d.line([x, top + 2, x + side * fw * 0.06, cy - fh * 0.02], fill=colour, width=line_w)
        d.line([x, bottom - 2, x + side * fw * 0.06, cy + fh * 0.12], fill=colour, width=line_w)


def _draw_face(rng, size, age, gender, race, mask_class, mask_rng=None) -> Image.Image:
    """Draw one face with its mask on a transparent layer (then rotated and pasted by the caller).
    The mask is drawn from ``mask_rng`` (default: ``rng``), so one face can wear several masks."""
    layer = Image.new("RGBA", (size, size), (0, 0, 0, 0))
    d = ImageDraw.Draw(layer)
    s = size * rng.uniform(0.82, 1.08)
    cx, cy = size / 2 + rng.normal(0, size * 0.03), size / 2 + rng.normal(0, size * 0.03)
    child = age < 13
    # shape varies with age and gender, size does not: a smaller face would carry less mask evidence
    fw = s * (rng.uniform(0.48, 0.52) if child else rng.uniform(0.40, 0.48) if gender == 1 else rng.uniform(0.44, 0.52))
    fh = s * rng.uniform(0.62, 0.70)
    skin = _jitter(rng, _SKIN_MEANS[race], _SKIN_SPREAD)
    hair = (150, 150, 150) if age > 58 and rng.random() < 0.7 else _HAIR[int(rng.integers(len(_HAIR)))]
    hair = _jitter(rng, hair, 10)

    long_hair = rng.random() < (0.75 if gender == 1 else 0.1)
    if long_hair:
        d.ellipse([cx - fw * 0.68, cy - fh * 0.62, cx + fw * 0.68, cy + fh * 0.55], fill=hair)
    d.ellipse([cx - fw * 0.56, cy - fh * 0.64, cx + fw * 0.56, cy + fh * 0.05], fill=hair)  # top hair
    for side in (-1, 1):  # ears
        d.ellipse([cx + side * fw * 0.5 - fw * 0.08, cy - fh * 0.08, cx + side * fw * 0.5 + fw * 0.08, cy + fh * 0.12], fill=skin)
    d.ellipse([cx - fw / 2, cy - fh / 2 + fh * 0.08, cx + fw / 2, cy + fh / 2], fill=skin)  # face
    d.chord([cx - fw * 0.5, cy - fh * 0.5, cx + fw * 0.5, cy - fh * 0.05], 180, 360, fill=hair)  # fringe
    dark = tuple(int(c * 0.55) for c in skin)

    ey = cy - fh * 0.05
    for side in (-1, 1):  # eyes and brows
        ex = cx + side * fw * 0.2
        d.ellipse([ex - fw * 0.09, ey - fh * 0.035, ex + fw * 0.09, ey + fh * 0.035], fill=(245, 245, 240))
        d.ellipse([ex - fw * 0.04, ey - fh * 0.03, ex + fw * 0.04, ey + fh * 0.03], fill=_jitter(rng, (60, 45, 30), 20))
        d.line([ex - fw * 0.1, ey - fh * 0.08, ex + fw * 0.1, ey - fh * 0.085], fill=hair, width=max(1, int(size / 60)))
    ny, my = cy + fh * 0.12, cy + fh * 0.28
    d.polygon([(cx, ey + fh * 0.02), (cx - fw * 0.07, ny + fh * 0.04), (cx + fw * 0.07, ny + fh * 0.04)], fill=dark)
    d.arc([cx - fw * 0.16, my - fh * 0.06, cx + fw * 0.16, my + fh * 0.05], 10, 170, fill=_jitter(rng, (150, 60, 60), 15), width=max(1, int(size / 40)))
    if gender == 0 and age > 18 and rng.random() < 0.3:  # beard: a dark lower face, like a dark mask
        d.chord([cx - fw * 0.5, cy, cx + fw * 0.5, cy + fh / 2], 0, 180, fill=_jitter(rng, hair, 8))

    top, bottom = cy + fh * 0.02, cy + fh * 0.47
    left, right = cx - fw * 0.54, cx + fw * 0.54
    line_w = max(1, int(size / 64))
    rng = rng if mask_rng is None else mask_rng
    if mask_class == INCORRECT:  # a surgical or cloth mask pulled down: the nose shows, or mouth and nose do
        mask_class = "with_surgical_mask" if rng.random() < 0.6 else "with_cloth_mask"
        drop = (ny + fh * 0.05 - top) if rng.random() < 0.6 else (my + fh * 0.05 - top)  # below the nose | on the chin
        top, bottom = top + drop, min(bottom + drop, cy + fh * 0.62)
    if mask_class == "with_surgical_mask":
        colour = _apart(skin, _jitter(rng, _SURGICAL[int(rng.choice(5, p=[0.45, 0.3, 0.1, 0.05, 0.1]))], 8))
        d.rounded_rectangle([left, top, right, bottom], radius=fw * 0.08, fill=colour, outline=_edge(colour))
        if rng.random() < 0.75:  # horizontal pleats, the surgical mask's signature, often faint
            pleat = tuple(int(c * rng.uniform(0.8, 0.93)) for c in colour)
            for k in range(3):
                y = top + (bottom - top) * (0.3 + 0.2 * k)
                d.line([left + fw * 0.04, y, right - fw * 0.04, y + rng.normal(0, 1)], fill=pleat, width=line_w)
        d.line([left + fw * 0.1, top + 1, right - fw * 0.1, top + 1], fill=(200, 200, 205), width=line_w)  # nose wire
        _ear_loops(d, cx, cy, fw, fh, top, bottom, colour, line_w)
    elif mask_class == "with_cloth_mask":
        pale = rng.random() < 0.4  # pale plain cloth masks share the surgical / FFP2 colours
        if pale:
            colour = _apart(skin, _jitter(rng, [(230, 230, 228), (170, 200, 225), (60, 60, 70)][int(rng.integers(3))], 10))
        else:
            colour = _apart(skin, tuple(int(c) for c in rng.integers(20, 235, 3)))
        if rng.random() < 0.5:
            d.chord([left, top - fh * 0.12, right, bottom + fh * 0.02], 0, 180, fill=colour, outline=_edge(colour))
            d.rectangle([left, top, right, top + (bottom - top) * 0.45], fill=colour)
        else:
            d.rounded_rectangle([left, top, right, bottom], radius=fw * 0.15, fill=colour, outline=_edge(colour))
        if rng.random() < 0.5:
            _ear_loops(d, cx, cy, fw, fh, top, bottom, colour, line_w)
        pattern = "plain" if pale else rng.choice(["plain", "stripes", "dots", "check"], p=[0.35, 0.25, 0.25, 0.15])
        ink = _jitter(rng, rng.integers(0, 255, 3), 0)
        if pattern == "stripes":
            for k in range(1, 6):
                x = left + (right - left) * k / 6
                d.line([x, top, x, bottom - fh * 0.05], fill=ink, width=line_w)
        elif pattern == "dots":
            for _ in range(10):
                px, py = rng.uniform(left + 3, right - 3), rng.uniform(top + 2, bottom - fh * 0.1)
                d.ellipse([px - 1.5, py - 1.5, px + 1.5, py + 1.5], fill=ink)
        elif pattern == "check":
            for k in range(1, 4):
                y = top + (bottom - top) * k / 4
                d.line([left, y, right, y], fill=ink, width=line_w)
                x = left + (right - left) * k / 4
                d.line([x, top, x, bottom - fh * 0.05], fill=ink, width=line_w)
    elif mask_class == "with_ffp2_mask":
        colour = _apart(skin, _jitter(rng, _FFP2[int(rng.choice(5, p=[0.4, 0.25, 0.15, 0.1, 0.1]))], 6))
        seam = tuple(int(c * rng.uniform(0.78, 0.92)) for c in colour)
        if rng.random() < 0.35:  # flat-fold FFP2: a rectangle with one horizontal fold, like a surgical mask
            d.rounded_rectangle([left, top - fh * 0.03, right, bottom + fh * 0.02], radius=fw * 0.1, fill=colour,
                                outline=_edge(colour))
            y = top + (bottom - top) * 0.5
            d.line([left + fw * 0.03, y, right - fw * 0.03, y], fill=seam, width=line_w)
        else:  # cup: pointed at nose and chin, with a vertical seam
            chin = bottom + fh * 0.04
            cup = [(left + fw * 0.05, top + fh * 0.03), (cx, top - fh * 0.05), (right - fw * 0.05, top + fh * 0.03),
                   (right - fw * 0.02, cy + fh * 0.3), (cx, chin), (left + fw * 0.02, cy + fh * 0.3)]
            d.polygon(cup, fill=colour, outline=_edge(colour))
            d.line([cx, top - fh * 0.04, cx, chin], fill=seam, width=line_w)
        if rng.random() < 0.6:  # head straps go up...
            for side in (-1, 1):
                d.line([cx + side * fw * 0.48, top + fh * 0.05, cx + side * fw * 0.56, cy - fh * 0.3], fill=seam, width=line_w)
        else:  # ...or ear loops, as on a surgical mask
            _ear_loops(d, cx, cy, fw, fh, top, bottom, colour, line_w)
        if rng.random() < 0.25:  # exhalation valve
            vx = cx + fw * rng.choice([-0.22, 0.22])
            vy = cy + fh * 0.25
            d.ellipse([vx - fw * 0.08, vy - fw * 0.08, vx + fw * 0.08, vy + fw * 0.08], fill=_jitter(rng, (120, 125, 130), 25))
    elif rng.random() < 0.2:  # no mask, but sometimes a scarf under the chin
        colour = _apart(skin, tuple(int(c) for c in rng.integers(20, 235, 3)))
        d.rectangle([cx - fw * 0.6, cy + fh * 0.48, cx + fw * 0.6, cy + fh * 0.62], fill=colour)
    return layer


def face_of(spec: SyntheticSpec, class_index: int, n: int) -> int:
    """Which face image ``n`` of a class shows, among the faces of number ``n``: the classes, in a cycle
    that starts at ``n mod classes`` (so every pairing of classes occurs), share a face in runs of
    ``shared_faces``."""
    return ((class_index - n) % len(CLASSES)) // spec.shared_faces


def draw_image(spec: SyntheticSpec, class_index: int, n: int) -> tuple[str, bytes]:
    """Draw image ``n`` of class ``class_index``; return its file name and JPEG bytes."""
    mask_rng = np.random.default_rng([spec.seed, class_index, n, GENERATOR_VERSION])
    # a face's own seed has five words, so it never equals an image's four-word seed
    rng = mask_rng if spec.shared_faces == 1 else \
        np.random.default_rng([spec.seed, n, face_of(spec, class_index, n), GENERATOR_VERSION, spec.shared_faces])
    age, gender, race = _demographics(rng)
    stamp = "2017{:02d}{:02d}{:02d}{:02d}{:02d}{:03d}".format(
        int(rng.integers(1, 13)), int(rng.integers(1, 29)), int(rng.integers(0, 24)),
        int(rng.integers(0, 60)), int(rng.integers(0, 60)), int(rng.integers(0, 1000)))
    size = spec.size
    img = _background(rng, size)
    face = _draw_face(rng, size, age, gender, race, spec.classes[class_index], mask_rng)
    face = face.rotate(float(rng.normal(0, 9)), resample=Image.BILINEAR, center=(size / 2, size / 2))
    img.paste(face, (0, 0), face)

    if spec.bias.applies(gender, race):  # the planted bias: weaker evidence for one group
        k = spec.bias.strength
        img = ImageEnhance.Contrast(img).enhance(1 - 0.7 * k)
        img = img.filter(ImageFilter.GaussianBlur(1.5 * k * size / 64))
        if rng.random() < 0.7 * k:  # a hand or object over the lower face
            d = ImageDraw.Draw(img)
            x0, y0 = rng.uniform(0.25, 0.5) * size, rng.uniform(0.5, 0.65) * size
            d.ellipse([x0, y0, x0 + size * 0.35, y0 + size * 0.3], fill=_jitter(rng, (150, 120, 100), 30))

    img = ImageEnhance.Brightness(img).enhance(rng.uniform(0.65, 1.3))
    img = ImageEnhance.Color(img).enhance(rng.uniform(0.7, 1.2))
    if rng.random() < 0.5:
        img = img.filter(ImageFilter.GaussianBlur(rng.uniform(0.2, 1.0) * size / 128))
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=int(rng.integers(60, 96)))
    return f"{age}_{gender}_{race}_{stamp}_{n}.jpg", buf.getvalue()


def filed_under(spec: SyntheticSpec, class_index: int, n: int) -> int:
    """The class folder image ``n`` of class ``class_index`` is filed under: its own, or with probability
    ``label_noise`` another one chosen uniformly (a six-word seed: never an image's or a face's)."""
    if not spec.label_noise:
        return class_index
    rng = np.random.default_rng([spec.seed, class_index, n, GENERATOR_VERSION, 0, 1])
    if rng.random() >= spec.label_noise:
        return class_index
    others = [c for c in range(len(spec.classes)) if c != class_index]
    return others[int(rng.integers(len(others)))]


def draw_outlier(spec: SyntheticSpec, i: int) -> tuple[int, str, bytes]:
    """Planted outlier ``i``: no face, only shapes, stripes and texture on a background; filed under class
    ``i mod classes`` with a UTKFace-style name numbered after that class's faces."""
    rng = np.random.default_rng([spec.seed, i, GENERATOR_VERSION, 0, 2, 0])
    class_index = i % len(spec.classes)
    size = spec.size
    img = _background(rng, size)
    d = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(3, 9))):
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        x0, y0 = rng.uniform(-0.2, 0.9, 2) * size
        x1, y1 = x0 + rng.uniform(0.1, 0.7) * size, y0 + rng.uniform(0.1, 0.7) * size
        shape = rng.choice(["rectangle", "ellipse", "line", "stripes"])
        if shape == "rectangle":
            d.rectangle([x0, y0, x1, y1], fill=colour)
        elif shape == "ellipse":
            d.ellipse([x0, y0, x1, y1], fill=colour)
        elif shape == "line":
            d.line([x0, y0, x1, y1], fill=colour, width=int(rng.integers(1, max(2, size // 10))))
        else:
            for k in range(int(rng.integers(3, 8))):
                y = y0 + k * size / 12
                d.line([0, y, size, y + rng.normal(0, size / 20)], fill=colour, width=max(1, size // 40))
    if rng.random() < 0.5:
        img = img.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 2.0) * size / 128))
    age, gender, race = _demographics(rng)
    n = spec.per_class[class_index] + i
    stamp = "2017{:02d}{:02d}{:02d}{:02d}{:02d}{:03d}".format(
        int(rng.integers(1, 13)), int(rng.integers(1, 29)), int(rng.integers(0, 24)),
        int(rng.integers(0, 60)), int(rng.integers(0, 60)), int(rng.integers(0, 1000)))
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=int(rng.integers(60, 96)))
    return class_index, f"{age}_{gender}_{race}_{stamp}_{n}.jpg", buf.getvalue()


def _write_images(args: tuple[SyntheticSpec, int, int, int, str]) -> tuple[int, list[dict]]:
    """Images ``start..stop`` of one class (each image has its own random stream, so chunks give the same
    bytes in any order), with the planted ones listed (class_index -1: the outliers ``start..stop``)."""
    spec, class_index, start, stop, out = args
    planted = []
    for n in range(start, stop):
        if class_index < 0:
            filed, name, data = draw_outlier(spec, n)
            truth, kind = NOT_A_FACE, "outlier"
        else:
            name, data = draw_image(spec, class_index, n)
            filed, truth, kind = filed_under(spec, class_index, n), spec.classes[class_index], "flipped"
        folder = Path(out) / spec.classes[filed]
        folder.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
        if kind == "outlier" or filed != class_index:
            planted.append({"path": f"{spec.classes[filed]}/{name}", "given_label": spec.classes[filed],
                            "true_label": truth, "kind": kind})
    return stop - start, planted


def generate(spec: SyntheticSpec, out: str | Path, workers: int | None = None, shown_as: str | Path | None = None) -> Path:
    """Write the dataset into ``out`` (which must not exist yet), in chunks over worker processes, and what
    was planted (``label_noise``, ``outliers``) into ``planted_path(out)`` beside it. The progress lines name
    ``shown_as`` where given: the folder the dataset will have once a temporary ``out`` is renamed."""
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} already exists and is not empty: choose a new --out folder.")
    chunk = 250
    jobs = [(spec, c, start, min(start + chunk, count), str(out))
            for c, count in enumerate((*spec.per_class, spec.outliers)) for start in range(0, count, chunk)]
    jobs = [(spec, -1 if c == len(spec.per_class) else c, *rest) for spec, c, *rest in jobs]
    workers = workers or min(len(jobs), os.cpu_count() or 1)
    total = sum(spec.per_class) + spec.outliers
    planted = []
    with progress(f"generating {total:,} embedded images into {shown_as or out}", total) as advance, \
            contextlib.nullcontext() if workers == 1 else ProcessPoolExecutor(workers) as pool:
        results = map(_write_images, jobs) if pool is None else pool.map(_write_images, jobs)
        for count, rows in results:
            advance(count)
            planted += rows
    if spec.label_noise or spec.outliers:
        rows = sorted(planted, key=lambda r: r["path"])
        text = "path,given_label,true_label,kind\n" + "".join(
            f"{r['path']},{r['given_label']},{r['true_label']},{r['kind']}\n" for r in rows)
        planted_path(out).write_text(text)
    return out


def planted_path(dataset: str | Path) -> Path:
    """Where the list of planted label errors and outliers of a generated dataset is kept: beside it."""
    dataset = Path(dataset)
    return dataset.parent / f"{dataset.name}.planted.csv"


def ensure_dataset(spec: SyntheticSpec, cache_dir: str | Path) -> Path:
    """Return the folder of ``spec``'s dataset under ``cache_dir``, generating it on first use.

    The dataset is written into a temporary sibling folder and renamed into place only when complete,
    so an interrupted generation never leaves a half dataset that a later run would take as whole.
    """
    final = Path(cache_dir) / "synthetic" / spec.key()
    if final.exists():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    remove_orphans(final.parent)  # what interrupted generations left behind
    with FileLock(f"{final}.lock"):  # parallel sweep jobs: one generates, the others wait
        if not final.exists():
            _generate_atomically(spec, final)
    return final


def _generate_atomically(spec: SyntheticSpec, final: Path) -> None:
    with temporary_sibling(final) as tmp:
        try:
            generate(spec, tmp, shown_as=final)
        except BaseException:
            planted_path(tmp).unlink(missing_ok=True)  # written beside the temporary folder, not in it
            raise
        if planted_path(tmp).exists():  # first: a dataset in place always has its truth beside it
            os.replace(planted_path(tmp), planted_path(final))
    # the parameters sit beside the dataset, not in it, so the class-folder reader sees only class folders
    final.with_suffix(".json").write_text(json.dumps({"generator_version": GENERATOR_VERSION, **asdict(spec)}, indent=2))


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="folder to create (must not exist or be empty)")
    parser.add_argument("--per-class", type=int, nargs="+", default=list(COMP6721_COUNTS),
                        help="one count for all classes or four counts (default: the COMP6721 study's)")
    spec, knob = SyntheticSpec(), BiasKnob()  # defaults from data/synthetic.yaml
    parser.add_argument("--seed", type=int, default=spec.seed)
    parser.add_argument("--size", type=int, default=spec.size, help="image side in pixels")
    parser.add_argument("--bias-attribute", choices=list(NAME_ATTRIBUTES), default=knob.attribute)
    parser.add_argument("--bias-group", type=int, default=knob.group, help="code of the disadvantaged group")
    parser.add_argument("--bias-strength", type=float, default=knob.strength, help="0 = off, 1 = strongest")
    parser.add_argument("--shared-faces", type=int, default=spec.shared_faces,
                        help="draw each face under this many mask classes")
    parser.add_argument("--incorrect-wear", action="store_true", help=f"add a fifth class, {INCORRECT}")
    parser.add_argument("--label-noise", type=float, default=spec.label_noise,
                        help="share of images filed under a wrong class")
    parser.add_argument("--outliers", type=int, default=spec.outliers,
                        help="number of non-face images in the class folders")
    args = parser.parse_args(argv)
    per_class = args.per_class[0] if len(args.per_class) == 1 else args.per_class
    try:
        spec = make_spec(per_class, args.seed, args.size,
                         BiasKnob(args.bias_attribute, args.bias_group, args.bias_strength), args.shared_faces,
                         args.incorrect_wear, args.label_noise, args.outliers)
    except ValueError as err:
        parser.error(str(err))
    out = generate(spec, args.out)
    planted = f"; planted label errors and outliers listed in {planted_path(out)}" if planted_path(out).exists() else ""
    print(f"wrote {sum(spec.per_class) + spec.outliers} images in {len(spec.classes)} class folders to {out}{planted}")


if __name__ == "__main__":
    main()
