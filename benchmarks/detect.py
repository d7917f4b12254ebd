"""Face detection on real photographs (recall, bare and masked) and detect + classify throughput.

    python benchmarks/detect.py [recall] [throughput] [heldout]     (recall and throughput by default)

Real photographs that scikit-image ships (nothing is downloaded):
* ``astronaut()``: one frontal face, whose box was labelled by hand (ASTRONAUT_FACE); pasted at known
  positions and scales into 640x480 scenes;
* ``lfw_subset()``: 100 face crops of 100 people from Labeled Faces in the Wild (25x25 grey, tight
  crops) and 100 crops without a face; each is upscaled to 96 px and pasted onto a 192 px grey canvas;
* ``camera()``: the cameraman, his face turned three-quarters to the side (box labelled by hand);
* 18 photos without a human face (NO_FACE: a cat, coffee, coins, textures, text, micrographs) and the
  100 non-face LFW crops, for false detections.
Masked faces are the same faces with a mask-like shape painted over the lower face (``paint_mask``: a
pale rounded band from between the eyes and the nose tip to below the chin, with pleats and ear loops).
A face counts as found when a box has IoU >= 0.5 with the known box (LFW: IoU >= 0.3, since the tight
25 px crops are smaller than the box a detector draws around a whole face).

Throughput: 640x480 frames with 4 and 12 faces (the astronaut's head, every other one masked); detect +
classify per frame with all faces of a frame in one forward pass (maskdet) against the same detection
followed by one forward pass per face, for the custom CNN (32 px) and MobileNetV2 (224 px), random
weights (speed does not depend on them), in one process, best of interleaved rounds.
"""

from __future__ import annotations

import argparse
import timeit
from itertools import product
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

ASTRONAUT_FACE = (184, 76, 90, 106)  # x, y, w, h: forehead to chin, cheek to cheek, labelled by hand
ASTRONAUT_PATCH = (130, 25, 330, 225)  # the head with hair and collar, pasted into scenes
ASTRONAUT_MASK_TOP = 0.40  # between the eyes (0.25 of the box) and the nose tip (0.51)
LFW_MASK_TOP = 0.50  # eyes at about 0.38, nose tip at 0.6 of an LFW crop
CAMERAMAN_FACE = (185, 100, 95, 100)  # x, y, w, h in camera(), labelled by hand


def astronaut_head() -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """The astronaut's head (RGB) and the face box inside it."""
    from skimage import data

    left, top, right, bottom = ASTRONAUT_PATCH
    x, y, w, h = ASTRONAUT_FACE
    return data.astronaut()[top:bottom, left:right].copy(), (x - left, y - top, w, h)


def paint_mask(rgb: np.ndarray, box, top: float = ASTRONAUT_MASK_TOP, colour=(170, 205, 230)) -> np.ndarray:
    """A copy of ``rgb`` with a surgical-mask-like shape over the lower part of face ``box``."""
    x, y, w, h = box
    image = Image.fromarray(rgb)
    pen = ImageDraw.Draw(image)
    y0, y1 = y + top * h, y + 1.04 * h
    outline = tuple(int(c * 0.75) for c in colour)
    for side in (x - 0.02 * w, x + 1.02 * w):  # ear loops
        pen.line([(side, y0 + 0.1 * (y1 - y0)), (x + 0.5 * w + 1.12 * (side - x - 0.5 * w), y + 0.3 * h)],
                 fill=(235, 235, 235), width=max(1, round(w / 60)))
    pen.rounded_rectangle([x - 0.02 * w, y0, x + 1.02 * w, y1], radius=0.18 * w, fill=colour, outline=outline,
                          width=max(1, round(w / 50)))
    for k in (0.3, 0.5, 0.7):  # pleats
        py = y0 + k * (y1 - y0)
        pen.line([(x + 0.08 * w, py), (x + 0.92 * w, py)], fill=outline, width=max(1, round(w / 60)))
    return np.asarray(image)


def compose(background: np.ndarray, heads: list[tuple[np.ndarray, tuple]], placements) -> tuple[np.ndarray, list]:
    """``background`` with each (head, face box) pasted at (x, y, scale); returns the scene and face boxes."""
    scene = Image.fromarray(background.copy())
    boxes = []
    for (head, (fx, fy, fw, fh)), (x, y, scale) in zip(heads, placements):
        patch = Image.fromarray(head)
        size = (round(patch.width * scale), round(patch.height * scale))
        scene.paste(patch.resize(size, Image.BICUBIC), (x, y))
        boxes.append((x + round(fx * scale), y + round(fy * scale), round(fw * scale), round(fh * scale)))
    return np.asarray(scene), boxes


def plain_background(width: int = 640, height: int = 480, seed: int = 0) -> np.ndarray:
    """A grey-blue gradient with a little noise, like a studio wall."""
    rng = np.random.default_rng(seed)
    ramp = np.linspace(150, 200, width)[None, :, None] * np.array([0.95, 1.0, 1.08])
    image = np.broadcast_to(ramp, (height, width, 3)) + rng.normal(0, 3, (height, width, 3))
    return np.clip(image, 0, 255).astype(np.uint8)


def iou(a, b) -> float:
    ax, ay, aw, ah = a
    bx, by, bw, bh = b
    w = max(0, min(ax + aw, bx + bw) - max(ax, bx))
    h = max(0, min(ay + ah, by + bh) - max(ay, by))
    return w * h / (aw * ah + bw * bh - w * h)


def found(faces, box, threshold: float = 0.5) -> bool:
    return any(iou((f.x, f.y, f.w, f.h), box) >= threshold for f in faces)


def lfw_canvases(masked: bool, faces: bool = True):
    """(192 px RGB canvas, face box) for each LFW crop, upscaled to 96 px at the centre."""
    from skimage import data

    crops = data.lfw_subset()[:100] if faces else data.lfw_subset()[100:]
    for crop in crops:
        face = np.asarray(Image.fromarray((crop * 255).astype(np.uint8)).resize((96, 96), Image.BICUBIC))
        canvas = np.full((192, 192), 128, np.uint8)
        canvas[48:144, 48:144] = face
        rgb = np.repeat(canvas[:, :, None], 3, axis=2)
        box = (48, 48, 96, 96)
        yield (paint_mask(rgb, box, LFW_MASK_TOP, colour=(215, 215, 215)) if masked else rgb), box


def astronaut_scenes(masked: bool):
    """640x480 scenes with the astronaut's face at 8 scales (face 27 to 135 px wide) and 3 positions."""
    head, box = astronaut_head()
    if masked:
        head = paint_mask(head, box)
    for scale in (0.3, 0.4, 0.5, 0.65, 0.8, 1.0, 1.2, 1.5):
        for k, (fx, fy) in enumerate(((0.05, 0.1), (0.4, 0.3), (0.6, 0.05))):
            x, y = round(fx * (640 - 200 * scale)), round(fy * (480 - 200 * scale))
            yield compose(plain_background(seed=k), [(head, box)], [(x, y, scale)])


NO_FACE = ("chelsea", "coffee", "rocket", "hubble_deep_field", "immunohistochemistry", "retina", "moon", "page",
           "text", "brick", "grass", "gravel", "coins", "clock", "horse", "logo", "cell", "microaneurysms")


def as_rgb(image: np.ndarray) -> np.ndarray:
    """scikit-image's sample in 8-bit RGB (some are grey, boolean or RGBA)."""
    image = (image * 255).astype(np.uint8) if image.dtype == bool else image.astype(np.uint8)
    image = np.repeat(image[:, :, None], 3, axis=2) if image.ndim == 2 else image[:, :, :3]
    return np.ascontiguousarray(image)


def no_face_photos():
    """scikit-image's photographs without a (human) face: a cat, coffee, coins, textures, text, micrographs."""
    from skimage import data

    for name in NO_FACE:
        yield name, as_rgb(getattr(data, name)())


def cameraman() -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """``camera()``: a face turned three-quarters to the side, box labelled by hand."""
    from skimage import data

    return as_rgb(data.camera()), CAMERAMAN_FACE


DETECTOR_CHOICES = {
    "haar default": dict(name="haar", cascade="default"),
    "haar default, min_neighbors=3": dict(name="haar", cascade="default", min_neighbors=3),
    "haar default, equalised": dict(name="haar", cascade="default", equalize=True),
    "haar alt2": dict(name="haar", cascade="alt2"),
    "haar alt2, min_neighbors=3": dict(name="haar", cascade="alt2", min_neighbors=3),
    "haar default + profile": dict(name="haar", cascade="default", profile=True),
    "blazeface full range, 0.5": dict(name="blazeface", model="full_range", min_face=0, score_threshold=0.5,
                                       verify_below=0),
    "blazeface short range, 0.5": dict(name="blazeface", model="short_range", min_face=0, score_threshold=0.5,
                                        verify_below=0),
    "blazeface short, min_face=24, 0.5": dict(name="blazeface", min_face=24, score_threshold=0.5, verify_below=0),
    "blazeface short, min_face=24, 0.65": dict(name="blazeface", min_face=24, score_threshold=0.65, verify_below=0),
    "blazeface short, min_face=24, 0.75": dict(name="blazeface", min_face=24, score_threshold=0.75, verify_below=0),
    "blazeface as shipped (conf/detector)": dict(name="blazeface"),
}


class MTCNNCandidate:
    """facenet-pytorch's MTCNN (MIT; weights inside its wheel), measured as a candidate only: the package pins
    torch < 2.3, so it cannot be an extra of maskdet; install it with ``pip install --no-deps facenet-pytorch``
    to measure it here."""

    margin = 0.4

    def __init__(self, threshold: float = 0.9):
        from facenet_pytorch import MTCNN

        self.net, self.threshold = MTCNN(keep_all=True, device="cpu"), threshold

    def detect(self, rgb: np.ndarray):
        from maskdet.detect import Face

        boxes, scores = self.net.detect(Image.fromarray(rgb))
        return [Face(round(x1), round(y1), round(x2 - x1), round(y2 - y1), float(p))
                for (x1, y1, x2, y2), p in zip(boxes if boxes is not None else [], scores if scores is not None else [])
                if p >= self.threshold]


class DlibCandidate:
    """dlib's detectors, measured as candidates only: the HOG frontal-face detector inside dlib (Boost licence;
    prebuilt as ``dlib-bin``) and the CNN (MMOD) detector whose weights ship in ``face_recognition_models``
    (CC0 weights; its ``__init__`` needs setuptools' pkg_resources, so the file is found without importing it).
    Both run on the frame upsampled once (faces down to about 40 px). Install them with
    ``pip install dlib-bin face_recognition_models`` to measure them here."""

    margin = 0.4

    def __init__(self, kind: str):
        import importlib.util

        import dlib

        self.kind = kind
        if kind == "cnn":
            spec = importlib.util.find_spec("face_recognition_models")
            if spec is None:
                raise ImportError("face_recognition_models")
            model = Path(spec.submodule_search_locations[0]) / "models" / "mmod_human_face_detector.dat"
            self.net = dlib.cnn_face_detection_model_v1(str(model))
        else:
            self.net = dlib.get_frontal_face_detector()

    def detect(self, rgb: np.ndarray):
        from maskdet.detect import Face

        if self.kind == "cnn":
            found = [(d.rect, d.confidence) for d in self.net(np.ascontiguousarray(rgb), 1)]
        else:
            rects, scores, _ = self.net.run(np.ascontiguousarray(rgb), 1, 0.0)
            found = list(zip(rects, scores))
        return [Face(r.left(), r.top(), r.width(), r.height(), float(p)) for r, p in found]


def candidates():
    """Each detector measured: maskdet's (by their options), and MTCNN and dlib's where installed."""
    from maskdet.detect import build_detector

    for label, options in DETECTOR_CHOICES.items():
        yield label, build_detector(options)
    try:
        yield "mtcnn (facenet-pytorch, not shipped)", MTCNNCandidate()
    except ImportError:
        print("(mtcnn not measured: pip install --no-deps facenet-pytorch)")
    for kind in ("hog", "cnn"):
        try:
            yield f"dlib {kind} (not shipped)", DlibCandidate(kind)
        except ImportError:
            print(f"(dlib {kind} not measured: pip install dlib-bin face_recognition_models)")


def extra(faces, box) -> int:
    """Boxes that overlap no labelled face (IoU < 0.3) in a photo with one face: false boxes there."""
    return sum(iou((f.x, f.y, f.w, f.h), box) < 0.3 for f in faces)


def recall() -> None:
    photos = list(no_face_photos())
    pixels = sum(rgb.shape[0] * rgb.shape[1] for _, rgb in photos) / 1e6
    print("\nFaces found (IoU with the known box) on real photographs; false detections on "
          f"{len(photos)} photos without a face ({pixels:.1f} megapixels) and 100 LFW non-face crops, and boxes "
          "beside the face in the 248 photos with one (extra)")
    print(f"{'detector':<32}{'LFW bare':>10}{'LFW masked':>12}{'astro bare':>12}{'astro masked':>14}"
          f"{'cameraman':>11}{'false: photos + crops':>23}{'extra':>7}")
    camera, camera_box = cameraman()
    for label, detector in candidates():
        cells, extras = [], 0
        for masked in (False, True):
            hits = []
            for rgb, box in lfw_canvases(masked):
                faces = detector.detect(rgb)
                hits.append(found(faces, box, 0.3))
                extras += extra(faces, box)
            cells.append(f"{sum(hits)}/{len(hits)}")
        for masked in (False, True):
            hits = []
            for rgb, boxes in astronaut_scenes(masked):
                faces = detector.detect(rgb)
                hits.append(found(faces, boxes[0]))
                extras += extra(faces, boxes[0])
            cells.append(f"{sum(hits)}/{len(hits)}")
        cells.append("found" if found(detector.detect(camera), camera_box) else "missed")
        false_photos = sum(len(detector.detect(rgb)) for _, rgb in photos)
        false_crops = sum(len(detector.detect(rgb)) for rgb, _ in lfw_canvases(False, faces=False))
        print(f"{label:<32}{cells[0]:>10}{cells[1]:>12}{cells[2]:>12}{cells[3]:>14}{cells[4]:>11}"
              f"{f'{false_photos} + {false_crops}':>23}{extras:>7}")


VERIFY_BELOW = (0.5, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9)  # 0.5 (the score threshold): no second look
VERIFY_SCORE = (0.5, 0.55, 0.6, 0.65, 0.7, 0.75)
VERIFY_SCORE_SMALL = (0.6, 0.65, 0.7, 0.75)


def second_look_scores(detector, rgb: np.ndarray) -> list[tuple]:
    """Every box BlazeFace keeps at its score threshold, with its score, its second look's score and whether only
    tiles see it: enough to replay any (verify_below, verify_score, verify_score_small) without running the model
    again."""
    faces = detector.detect(rgb)
    mirrored = detector.mirrored_pass(rgb, faces)
    return [(face, face.score, detector.second_look(rgb, face, mirrored), not detector.seen_whole(face, rgb))
            for face in faces]


def heldout() -> None:
    """The second look's three settings chosen on one half of the photographs and measured on the other half
    (and the other way round): what the shipped settings, chosen on all of them, would find on new photos."""
    from maskdet.detect import BLAZEFACE, build_detector

    detector = build_detector({"name": "blazeface", "verify_below": 0})  # boxes at the score threshold, no look
    items = []  # (half, kind, known box or None, IoU needed, boxes with scores)
    for masked in (False, True):
        for k, (rgb, box) in enumerate(lfw_canvases(masked)):
            items.append((k % 2, f"lfw {'masked' if masked else 'bare'}", box, 0.3, second_look_scores(detector, rgb)))
        for k, (rgb, boxes) in enumerate(astronaut_scenes(masked)):
            items.append((k % 2, f"astro {'masked' if masked else 'bare'}", boxes[0], 0.5,
                          second_look_scores(detector, rgb)))
    for k, (_, rgb) in enumerate(no_face_photos()):
        items.append((k % 2, "false", None, 0, second_look_scores(detector, rgb)))
    for k, (rgb, _) in enumerate(lfw_canvases(False, faces=False)):
        items.append((k % 2, "false", None, 0, second_look_scores(detector, rgb)))

    def measure(half: int, below: float, least: float, least_small: float) -> dict:
        counts: dict = {"extra": [0]}
        for part, kind, box, needed, scored in items:
            if part != half:
                continue
            # BlazeFaceDetector.detect's rule: kept when sure enough, or found again by the second look
            kept = [face for face, score, again, small in scored
                    if score >= below or again >= (least_small if small else least)]
            hit = len(kept) if box is None else int(found(kept, box, needed))
            total = counts.setdefault(kind, [0, 0])
            total[0] += hit
            total[1] += 1
            if box is not None:
                counts["extra"][0] += extra(kept, box)
        return counts

    def cells(counts: dict) -> str:
        order = ("lfw bare", "lfw masked", "astro bare", "astro masked")
        return "".join(f"{f'{counts[k][0]}/{counts[k][1]}':>14}" for k in order) + f"{counts['false'][0]:>8}" \
            + f"{counts['extra'][0]:>8}"

    print("\nThe second look chosen on one half (even or odd photos), measured on the other: most masked faces "
          "with no false box on the half it was chosen on")
    print(f"{'chosen on':<11}{'verify_below':>13}{'verify_score':>13}{'..._small':>10}{'measured on':>13}"
          f"{'LFW bare':>14}{'LFW masked':>14}{'astro bare':>14}{'astro masked':>14}{'false':>8}{'extra':>8}")
    names = ("even", "odd")
    for chosen_on in (0, 1):
        grid = [(setting, measure(chosen_on, *setting)) for setting in product(VERIFY_BELOW, VERIFY_SCORE, VERIFY_SCORE_SMALL)]
        clean = [g for g in grid if g[1]["false"][0] == 0] or grid
        # most masked faces, then bare ones, then fewest extra boxes, then the fewest second looks; ties go to
        # the first in the grid (the lowest verify_score and verify_score_small)
        setting, counts = max(clean, key=lambda g: (g[1]["lfw masked"][0] + g[1]["astro masked"][0],
                                                    g[1]["lfw bare"][0] + g[1]["astro bare"][0], -g[1]["extra"][0],
                                                    -g[0][0]))
        print(f"{names[chosen_on]:<11}{setting[0]:>13}{setting[1]:>13}{setting[2]:>10}{names[chosen_on]:>13}{cells(counts)}")
        print(f"{'':<11}{'':>13}{'':>13}{'':>10}{names[1 - chosen_on]:>13}{cells(measure(1 - chosen_on, *setting))}")
    shipped = BLAZEFACE["verify_below"], BLAZEFACE["verify_score"], BLAZEFACE["verify_score_small"]  # conf/detector
    for half in (0, 1):
        print(f"{'shipped':<11}{shipped[0]:>13}{shipped[1]:>13}{shipped[2]:>10}{names[half]:>13}{cells(measure(half, *shipped))}")


def crowd_frame(count: int) -> np.ndarray:
    """A 640x480 frame with ``count`` (4 or 12) heads in a grid, every other one masked."""
    head, box = astronaut_head()
    heads = [(paint_mask(head, box) if k % 2 else head, box) for k in range(count)]
    columns, rows = (2, 2) if count <= 4 else (4, 3)
    scale = min(640 / columns, 480 / rows) / 200 * (0.75 if count <= 4 else 0.95)
    cell_w, cell_h = 640 // columns, 480 // rows
    scene, _ = compose(plain_background(), heads, [(c * cell_w + 4, r * cell_h + 4, scale)
                                                  for r in range(rows) for c in range(columns)][:count])
    return scene


def best_seconds(runs: dict, repeats: int, number: int) -> dict:
    """Seconds per call of each function: the best of ``repeats`` rounds of ``number`` calls, the rounds of
    all functions interleaved (timeit's rule: on a shared machine the minimum is the least disturbed)."""
    for run in runs.values():
        run()  # warm-up
    best = dict.fromkeys(runs, float("inf"))
    for _ in range(repeats):
        for name, run in runs.items():
            best[name] = min(best[name], timeit.timeit(run, number=number) / number)
    return best


def throughput(repeats: int = 20, number: int = 1) -> None:
    import yaml

    from maskdet.detect import analyse, build_detector, face_crops
    from maskdet.inference import classify_crops
    from maskdet.models import MaskClassifier

    conf = Path(__file__).resolve().parents[1] / "maskdet" / "conf" / "detector"
    print(f"\nThroughput on 640x480 frames ({torch.get_num_threads()} threads): frames/s, best of "
          f"{repeats} rounds of {number} frames; each detector with its shipped settings (conf/detector)")
    print(f"{'detector, model':<36}{'faces':>6}{'detection only':>16}{'per-face loop':>16}{'maskdet (batched)':>20}"
          f"{'ratio':>8}")
    for name, architecture, size in (("haar", "custom_cnn", 32), ("blazeface", "custom_cnn", 32),
                                     ("haar", "mobilenet_v2", 224), ("blazeface", "mobilenet_v2", 224)):
        detector = build_detector(yaml.safe_load((conf / f"{name}.yaml").read_text()))
        model = MaskClassifier(architecture, num_classes=4, image_size=size, weights=None).eval()
        for count in (4, 12):
            frame = crowd_frame(count)

            def per_face(model=model, size=size, frame=frame, detector=detector):
                image = Image.fromarray(frame)
                for face in detector.detect(frame):  # one crop, one forward pass per face
                    classify_crops(model, face_crops(image, [face], size, detector.margin))

            seconds = best_seconds({"detect": lambda frame=frame, detector=detector: detector.detect(frame),
                                    "per_face": per_face,
                                    "batched": lambda model=model, frame=frame, detector=detector:
                                        analyse(model, detector, frame)},
                                   repeats, number)
            fps = {part: 1 / s for part, s in seconds.items()}
            faces = len(detector.detect(frame))
            print(f"{name + ', ' + architecture + f' at {size} px':<36}{faces:>6}{fps['detect']:>16.1f}{fps['per_face']:>16.1f}"
                  f"{fps['batched']:>20.1f}{fps['batched'] / fps['per_face']:>7.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("parts", nargs="*", help="recall, throughput, heldout (default: recall and throughput)")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--number", type=int, default=1, help="frames per round")
    args = parser.parse_args()
    args.parts = args.parts or ["recall", "throughput"]
    parts = {"recall", "throughput", "heldout"}
    if set(args.parts) - parts:
        parser.error(f"unknown part {sorted(set(args.parts) - parts)}: choose recall, throughput, heldout")
    if "recall" in args.parts:
        recall()
    if "throughput" in args.parts:
        throughput(args.repeats, args.number)
    if "heldout" in args.parts:
        heldout()


if __name__ == "__main__":
    main()
