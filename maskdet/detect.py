"""Find the faces in photos and video frames, then classify each face with a checkpoint (no Hydra here).

The classifiers are trained on face crops; people have group photos and videos. A detector (chosen by
``build_detector``) turns an RGB frame into boxes; each box is widened by the detector's ``margin`` into a
square crop framed like a training crop, preprocessed exactly as training images are (PIL RGB, bilinear
resize to the checkpoint's image_size, as ``images.load_resized``), and all faces of a frame go through the
classifier together, in batches (``inference.classify_crops``: this module keeps the detectors and the scenes,
inference the model). ``detect_and_classify`` does this for photo and video files, writes
annotated copies, and returns one row per face, one summary row per analysed frame and the skipped files.

Detectors (the optional ``detect`` extra; nothing is downloaded at run time):

* ``blazeface`` (the default): MediaPipe's BlazeFace TFLite models, shipped in ``maskdet/detectors/``, run by
  ai-edge-litert's interpreter, with overlapping tiles for small faces. Finds masked faces Haar misses.
* ``haar``: the frontal-face Haar cascades that opencv-python-headless 4.x ships (``cv2.data.haarcascades``;
  the 5.x wheels no longer ship them), optionally with the profile cascade. Trained on bare faces: it
  misses many masked faces (benchmarks/detect.py measures how many).
* ``onnx``: a YuNet face detector in ONNX format supplied by the user (``model_path``), run by
  ``cv2.FaceDetectorYN``. Other ONNX detectors (RetinaFace exports and the like) have other outputs and
  are refused with a message when they are loaded.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image, ImageDraw, ImageFont

from maskdet.config import packaged_defaults
from maskdet.data.images import BadImageError, display_path, load_rgb, skip
from maskdet.errors import ConfigError
from maskdet.inference import classify_crops, prediction_columns, prediction_schema
from maskdet.progress import progress

INSTALL = "pip install 'maskdet[detect]'"
# Each detector's defaults are its config file's (maskdet/conf/detector/), for Python callers too.
HAAR, YUNET, BLAZEFACE = (packaged_defaults(f"detector/{name}.yaml") for name in ("haar", "onnx", "blazeface"))
VIDEO_EXTENSIONS = {".mp4", ".avi", ".mov", ".mkv"}
# What annotated videos are written with: these two encoders are in the FFmpeg that the
# opencv-python-headless wheels bundle (H.264 is not); other containers are written as .mp4.
VIDEO_WRITERS = {".avi": "MJPG", ".mp4": "mp4v"}
UNMASKED = "without_mask"  # the class that counts as "no mask" in the masked share


def require_cv2():
    """The cv2 module, or a ConfigError saying how to install it."""
    try:
        import cv2
    except ImportError as err:
        raise ConfigError(f"detect=true needs OpenCV, which is an optional extra: {INSTALL} (it installs "
                          f"opencv-python-headless 4.x). Importing cv2 failed: {err}") from None
    return cv2


@dataclass(frozen=True)
class Face:
    """A face box in pixels of the frame (x, y: top left) and the detector's score for it."""

    x: int
    y: int
    w: int
    h: int
    score: float


class HaarDetector:
    """OpenCV's Viola-Jones face cascades, as shipped in opencv-python-headless 4.x.

    ``score`` is the number of raw detections merged into the box (``detectMultiScale2``): higher is surer;
    ``min_neighbors`` is the least a box needs to be kept. ``profile`` adds the profile cascade, run on the
    frame and its mirror image (it finds left-facing profiles only), for faces turned sideways.
    """

    CASCADES = {"default": "haarcascade_frontalface_default.xml", "alt": "haarcascade_frontalface_alt.xml",
                "alt2": "haarcascade_frontalface_alt2.xml", "alt_tree": "haarcascade_frontalface_alt_tree.xml"}

    def __init__(self, cascade: str = HAAR["cascade"], profile: bool = HAAR["profile"],
                 scale_factor: float = HAAR["scale_factor"], min_neighbors: int = HAAR["min_neighbors"],
                 min_size: int = HAAR["min_size"], equalize: bool = HAAR["equalize"], margin: float = HAAR["margin"]):
        cv2 = self.cv2 = require_cv2()
        if cascade not in self.CASCADES:
            raise ConfigError(f"detector.cascade={cascade} is not a Haar face cascade; choose one of "
                              f"{', '.join(self.CASCADES)}.")
        folder = getattr(getattr(cv2, "data", None), "haarcascades", None)
        if not folder or not Path(folder, self.CASCADES[cascade]).is_file():
            raise ConfigError(f"OpenCV {cv2.__version__} has no Haar cascade files (the 5.x wheels no longer ship "
                              f"cv2.data.haarcascades): install a 4.x wheel with {INSTALL}, or use detector=onnx.")
        self.frontal = cv2.CascadeClassifier(str(Path(folder, self.CASCADES[cascade])))
        self.profile = cv2.CascadeClassifier(str(Path(folder, "haarcascade_profileface.xml"))) if profile else None
        if scale_factor <= 1 or min_neighbors < 0 or min_size < 1:
            raise ConfigError(f"detector: scale_factor={scale_factor} must be above 1, min_neighbors={min_neighbors} "
                              f"at least 0 and min_size={min_size} at least 1.")
        self.options = {"scaleFactor": float(scale_factor), "minNeighbors": int(min_neighbors),
                        "minSize": (int(min_size), int(min_size))}
        self.equalize = equalize
        self.margin = float(margin)

    def _run(self, cascade, gray: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        boxes, votes = cascade.detectMultiScale2(gray, **self.options)
        return np.asarray(boxes, dtype=int).reshape(-1, 4), np.asarray(votes, dtype=float).reshape(-1)

    def detect(self, rgb: np.ndarray) -> list[Face]:
        cv2 = self.cv2
        gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
        if self.equalize:
            gray = cv2.equalizeHist(gray)
        boxes, votes = self._run(self.frontal, gray)
        if self.profile is not None:
            left, left_votes = self._run(self.profile, gray)
            right, right_votes = self._run(self.profile, np.ascontiguousarray(gray[:, ::-1]))
            right[:, 0] = gray.shape[1] - right[:, 0] - right[:, 2]  # back from the mirror image
            boxes = np.concatenate([boxes, left, right])
            votes = np.concatenate([votes, left_votes, right_votes])
            # a face seen by two cascades is one face: OpenCV's non-maximum suppression keeps the surer box
            keep = cv2.dnn.NMSBoxes(boxes.tolist(), votes.tolist(), 0.0, 0.3) if len(boxes) else []
            boxes, votes = boxes[np.asarray(keep, dtype=int)], votes[np.asarray(keep, dtype=int)]
        return [Face(int(x), int(y), int(w), int(h), float(v)) for (x, y, w, h), v in zip(boxes, votes)]


class YuNetDetector:
    """A user-supplied YuNet face detector (ONNX) run by ``cv2.FaceDetectorYN``; ``score`` is its face
    probability. The model is checked on a blank frame when it is loaded, so a wrong file stops the run
    before anything is written."""

    def __init__(self, model_path: str | None = YUNET["model_path"], score_threshold: float = YUNET["score_threshold"],
                 nms_threshold: float = YUNET["nms_threshold"], top_k: int = YUNET["top_k"],
                 margin: float = YUNET["margin"]):
        cv2 = self.cv2 = require_cv2()
        supported = ("detector=onnx runs YuNet face detectors in ONNX format through cv2.FaceDetectorYN (for "
                     "example face_detection_yunet_2023mar.onnx from the OpenCV model zoo; maskdet downloads "
                     "nothing), or use detector=haar, which needs no file")
        if model_path in (None, "", "???"):
            raise ConfigError(f"detector.model_path is not set: {supported}. Pass detector.model_path=<file.onnx>.")
        path = Path(str(model_path)).expanduser()
        if not path.is_file():
            what = "is a folder" if path.is_dir() else "does not exist"
            raise ConfigError(f"detector.model_path={display_path(model_path)} {what}: {supported}.")
        self.path = path
        try:
            self.net = cv2.FaceDetectorYN.create(str(path), "", (320, 320), float(score_threshold),
                                                 float(nms_threshold), int(top_k))
            self.detect(np.zeros((320, 320, 3), np.uint8))
        except cv2.error as err:
            reason = str(err).strip().partition("error: ")[2] or str(err).strip()  # without OpenCV's source path
            raise ConfigError(f"detector.model_path={display_path(path)} cannot be used as a YuNet face detector "
                              f"(OpenCV: {reason[:300]}). {supported}.") from None
        self.margin = float(margin)

    def detect(self, rgb: np.ndarray) -> list[Face]:
        cv2 = self.cv2
        height, width = rgb.shape[:2]
        self.net.setInputSize((width, height))
        _, found = self.net.detect(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
        faces = []
        for row in ([] if found is None else found):  # x, y, w, h, five landmarks (x, y), score
            x, y = max(0, round(row[0])), max(0, round(row[1]))
            w, h = min(width, round(row[0] + row[2])) - x, min(height, round(row[1] + row[3])) - y
            if w > 0 and h > 0:
                faces.append(Face(int(x), int(y), int(w), int(h), float(row[14])))
        return faces


MODELS = Path(__file__).parent / "detectors"  # BlazeFace models shipped with maskdet (detectors/NOTICE.md)


def ssd_anchors(input_size: int, strides: Sequence[int], per_location: Sequence[int]) -> np.ndarray:
    """Anchor centres (x, y, relative to the input) of MediaPipe's SSD anchor calculator with fixed anchor size,
    the layout the BlazeFace models were trained with: for each stride, a grid of cells, each repeated once per
    anchor. Written here because only MediaPipe's graph code (not a library function) computes them."""
    centres = []
    for stride, count in zip(strides, per_location):
        cells = int(np.ceil(input_size / stride))
        ys, xs = np.meshgrid((np.arange(cells) + 0.5) / cells, (np.arange(cells) + 0.5) / cells, indexing="ij")
        grid = np.stack([xs.ravel(), ys.ravel()], axis=1)
        centres.append(np.repeat(grid, count, axis=0))
    return np.concatenate(centres).astype(np.float32)


class BlazeFaceDetector:
    """MediaPipe's BlazeFace face detector (TFLite, shipped inside maskdet), run by ``ai-edge-litert``'s
    interpreter. It was trained on faces in the wild, so it finds faces whose mouth and nose are covered, which
    Haar's bare-face cascades miss (benchmarks/detect.py). ``score`` is its face probability.

    ``model``: ``short_range`` (128 px input, trained on faces that fill much of the picture) or ``full_range``
    (192 px, faces up to about 5 m away). The whole frame is scaled to the input, so a face must be large
    after that scaling; ``min_face`` (pixels, 0: off) adds overlapping tiles, each a level of a pyramid whose
    smallest tiles are ``TILE_PER_FACE`` times ``min_face``, so faces down to that size fill a tile as the model
    expects (each level halves the tile side; tiles overlap by half). Boxes of the frame and the tiles are
    merged by non-maximum suppression.

    A box scoring below ``verify_below`` gets a second look (``second_look``): the model must find it again,
    at ``verify_score`` or more (``verify_score_small`` for a face under an eighth of the frame's longer
    side, which the whole frame's pass cannot see), both mirrored and in a crop zoomed in around it. A face is found
    again under either change; a texture that happened to look like one mostly is not (on the benchmark's
    photos it keeps 110 of the 120 masked faces that a threshold of 0.5 finds and drops all 46 of its false
    boxes on photos without a face; benchmarks/detect.py). ``verify_below`` at or under ``score_threshold`` turns the second look off."""

    TILE_PER_FACE = 8  # the short-range model finds faces down to about an eighth of its input (benchmarks/detect.py)

    SETTINGS = {"full_range": ("face_detection_full_range.tflite", 192, (4,), (1,)),
                "short_range": ("face_detection_short_range.tflite", 128, (8, 16), (2, 6))}

    def __init__(self, model: str = BLAZEFACE["model"], score_threshold: float = BLAZEFACE["score_threshold"],
                 nms_threshold: float = BLAZEFACE["nms_threshold"], min_face: int = BLAZEFACE["min_face"],
                 margin: float = BLAZEFACE["margin"], verify_below: float = BLAZEFACE["verify_below"],
                 verify_score: float = BLAZEFACE["verify_score"], verify_score_small: float = BLAZEFACE["verify_score_small"]):
        if model not in self.SETTINGS:
            raise ConfigError(f"detector.model={model!r} is unknown: choose full_range or short_range.")
        if isinstance(min_face, bool) or not isinstance(min_face, int) or min_face < 0:
            raise ConfigError(f"detector.min_face={min_face!r} must be a whole number of pixels (0: the whole frame "
                              "only, no tiles).")
        for key, value in (("score_threshold", score_threshold), ("nms_threshold", nms_threshold),
                           ("verify_score", verify_score), ("verify_score_small", verify_score_small)):
            if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < 1:
                raise ConfigError(f"detector.{key}={value!r} must be a number between 0 and 1.")
        if isinstance(verify_below, bool) or not isinstance(verify_below, int | float) or not 0 <= verify_below <= 1:
            raise ConfigError(f"detector.verify_below={verify_below!r} must be a score from 0 to 1 (boxes scoring below "
                              "it get a second look; 0: none does).")
        try:
            from ai_edge_litert.interpreter import Interpreter
        except ImportError as err:
            raise ConfigError(f"detector=blazeface needs the TFLite interpreter ai-edge-litert, part of the detect "
                              f"extra: {INSTALL}. Importing it failed: {err}") from None
        name, self.size, strides, per_location = self.SETTINGS[model]
        self.interpreter = Interpreter(model_path=str(MODELS / name), num_threads=2)
        self.interpreter.allocate_tensors()
        self.input = self.interpreter.get_input_details()[0]["index"]
        outputs = sorted(self.interpreter.get_output_details(), key=lambda o: o["shape"][-1])
        self.scores_out, self.boxes_out = outputs[0]["index"], outputs[1]["index"]  # (1, N, 1) and (1, N, 16)
        self.anchors = ssd_anchors(self.size, strides, per_location)
        self.score_threshold, self.nms_threshold = float(score_threshold), float(nms_threshold)
        self.min_face, self.margin = int(min_face), float(margin)
        self.verify_below, self.verify_score = float(verify_below), float(verify_score)
        self.verify_score_small = float(verify_score_small)

    def _pass(self, rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
        """Every anchor's raw box and face probability from one square-padded pass over ``rgb``, and the
        padded square's side."""
        height, width = rgb.shape[:2]
        side = max(height, width)
        square = np.zeros((side, side, 3), np.uint8)  # padded at the bottom and right: boxes keep their origin
        square[:height, :width] = rgb
        image = np.asarray(Image.fromarray(square).resize((self.size, self.size), Image.BILINEAR), np.float32)
        self.interpreter.set_tensor(self.input, (image / 127.5 - 1.0)[None])
        self.interpreter.invoke()
        raw = self.interpreter.get_tensor(self.boxes_out)[0]
        logits = np.clip(self.interpreter.get_tensor(self.scores_out)[0, :, 0].astype(np.float64), -100, 100)
        return raw, 1 / (1 + np.exp(-logits)), side

    def face_probability(self, rgb: np.ndarray) -> float:
        """How much a picture that should be one face crop looks like a face at all: the highest face
        probability of one pass over the whole of it. A model trained on faces in the wild, not on the mask
        classes, so a non-face filed in a face folder scores low however a mask classifier reads it
        (label_issues flags the lowest as outliers)."""
        return float(self._pass(rgb)[1].max())

    def _run(self, rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Boxes (x1, y1, x2, y2 in ``rgb``'s pixels) and scores of one square-padded pass over ``rgb``."""
        raw, scores, side = self._pass(rgb)
        keep = scores >= self.score_threshold
        raw, scores, anchors = raw[keep], scores[keep], self.anchors[keep]
        centre = anchors + raw[:, :2] / self.size
        half = raw[:, 2:4] / self.size / 2
        boxes = np.concatenate([centre - half, centre + half], axis=1) * side
        return boxes, scores

    def tile_sides(self, height: int, width: int) -> list[int]:
        """The pyramid's tile sides for a frame: half the longer side, halved again while a tile stays at least
        ``TILE_PER_FACE * min_face``; none when ``min_face`` is 0 or the frame is already that small."""
        sides, side = [], max(height, width) // 2
        while self.min_face and side >= self.TILE_PER_FACE * self.min_face:
            sides.append(side)
            side //= 2
        if self.min_face and (not sides or sides[-1] > self.TILE_PER_FACE * self.min_face) \
                and max(height, width) > self.TILE_PER_FACE * self.min_face:
            sides.append(self.TILE_PER_FACE * self.min_face)
        return sides

    def detect(self, rgb: np.ndarray) -> list[Face]:
        from torchvision.ops import nms

        height, width = rgb.shape[:2]
        found = [self._run(rgb)]
        for tile in self.tile_sides(height, width):
            rows, columns = (max(1, int(np.ceil(2 * n / tile)) - 1) for n in (height, width))  # half-tile steps
            for top in np.linspace(0, max(height - tile, 0), rows).round().astype(int):
                for left in np.linspace(0, max(width - tile, 0), columns).round().astype(int):
                    boxes, scores = self._run(rgb[top:top + tile, left:left + tile])
                    found.append((boxes + [left, top, left, top], scores))
        boxes = torch.from_numpy(np.concatenate([b for b, _ in found]).astype(np.float32))
        scores = torch.from_numpy(np.concatenate([s for _, s in found]).astype(np.float32))
        kept = []
        for i in nms(boxes, scores, self.nms_threshold).tolist():  # best first
            # a tile can see part of a face (the eyes above a mask) as a smaller face inside a bigger box, which
            # IoU does not suppress: a box mostly inside a better one is the same face
            if not kept or float(share_inside(boxes[i:i + 1], boxes[kept]).max()) < 0.6:
                kept.append(i)
        faces = []
        for i in kept:
            x1, y1 = max(0, round(float(boxes[i, 0]))), max(0, round(float(boxes[i, 1])))
            x2, y2 = min(width, round(float(boxes[i, 2]))), min(height, round(float(boxes[i, 3])))
            if x2 > x1 and y2 > y1:
                faces.append(Face(x1, y1, x2 - x1, y2 - y1, float(scores[i])))
        unsure = [f for f in faces if f.score < self.verify_below]
        if unsure:
            mirrored = self.mirrored_pass(rgb, unsure)
            faces = [f for f in faces if f.score >= self.verify_below
                     or self.second_look(rgb, f, mirrored) >= self.score_needed_again(f, rgb)]
        return faces

    def mirrored_pass(self, rgb: np.ndarray, faces: Sequence[Face]) -> tuple[np.ndarray, np.ndarray] | None:
        """The mirrored frame's boxes and scores, shared by the second looks of ``faces``; None when none of them
        is large enough to be looked at in it (smaller ones are mirrored in their own crop)."""
        if any(self.seen_whole(f, rgb) for f in faces):
            return self._run(np.ascontiguousarray(rgb[:, ::-1]))
        return None

    def score_needed_again(self, face: Face, rgb: np.ndarray) -> float:
        """The second look's bar: ``verify_score``, or ``verify_score_small`` for a face too small for the whole
        frame's pass, where false boxes are most common (the lower edge of a mask, a galaxy; benchmarks/detect.py)."""
        return self.verify_score if self.seen_whole(face, rgb) else self.verify_score_small

    def seen_whole(self, face: Face, rgb: np.ndarray) -> bool:
        """Whether ``face`` is large enough for the model to see it in a pass over the whole frame (smaller faces
        are found by tiles only)."""
        return max(face.w, face.h) * self.TILE_PER_FACE >= max(rgb.shape[:2])

    ZOOM = 2.2  # the second look's crop: this many times the box's side, centred on it

    def second_look(self, rgb: np.ndarray, face: Face, mirrored: tuple[np.ndarray, np.ndarray] | None) -> float:
        """The lower of the scores with which the model finds ``face`` again (IoU >= 0.4) mirrored and in a crop of
        ``ZOOM`` times the box around it; 0 where it does not find it. Mirrored means the mirrored frame
        (``mirrored``: its boxes and scores, computed here when None) for a face the whole frame's pass can see,
        and the mirrored crop for a smaller one (under an eighth of the frame's longer side), which the whole
        frame would miss however real it is (the masked astronauts at 32-35 px were dropped that way;
        benchmarks/detect.py)."""
        side = int(max(face.w, face.h) * self.ZOOM)
        left = int(max(0, face.x + face.w / 2 - side / 2))
        top = int(max(0, face.y + face.h / 2 - side / 2))
        crop = rgb[top:top + side, left:left + side]
        boxes, scores = self._run(crop)
        again = [_best_match(boxes + [left, top, left, top], scores, face)]
        if self.seen_whole(face, rgb):
            (boxes, scores), width, shift = mirrored or self.mirrored_pass(rgb, [face]), rgb.shape[1], [0, 0, 0, 0]
        else:
            (boxes, scores), width, shift = self._run(np.ascontiguousarray(crop[:, ::-1])), crop.shape[1], [left, top, left, top]
        unmirrored = np.stack([width - boxes[:, 2], boxes[:, 1], width - boxes[:, 0], boxes[:, 3]], 1) + shift
        again.append(_best_match(unmirrored, scores, face))
        return min(again)


def _best_match(boxes: np.ndarray, scores: np.ndarray, face: Face, iou: float = 0.4) -> float:
    """The best score among ``boxes`` (x1, y1, x2, y2) that overlap ``face`` with at least ``iou``; 0 if none."""
    from torchvision.ops import box_iou

    if not len(boxes):
        return 0.0
    target = torch.tensor([[face.x, face.y, face.x + face.w, face.y + face.h]], dtype=torch.float32)
    overlap = box_iou(torch.from_numpy(np.asarray(boxes, np.float32)), target)[:, 0].numpy()
    return float(np.max(np.where(overlap >= iou, scores, 0.0)))


def share_inside(boxes: torch.Tensor, others: torch.Tensor) -> torch.Tensor:
    """N x M: the share of each box's own area (x1, y1, x2, y2) that lies inside each of ``others``. IoU's
    denominator is the union; this one is the box alone, so a small box inside a big one scores 1 (COCO's
    crowd rule, and a tile's part of a face inside the whole face). torchvision has IoU only."""
    from torchvision.ops import box_area

    top_left = torch.maximum(boxes[:, None, :2], others[None, :, :2])
    bottom_right = torch.minimum(boxes[:, None, 2:], others[None, :, 2:])
    inter = (bottom_right - top_left).clamp(min=0).prod(dim=2)
    return inter / box_area(boxes).clamp(min=1e-6)[:, None]


DETECTORS = {"haar": HaarDetector, "onnx": YuNetDetector, "blazeface": BlazeFaceDetector}


def build_detector(options: dict):
    """The detector a ``conf/detector/*.yaml`` describes: ``_target_`` names its class (or ``name``, the short
    form: haar, onnx, blazeface), the other options are its arguments, checked before any work by
    ``preflight.check_keys``. Built here rather than by Hydra's ``instantiate`` so that only the classes of
    this module can be named (a config names a detector, not any code)."""
    if not options:
        raise ConfigError("detect=true needs a detector: detector=blazeface or detector=haar (built in), or "
                          "detector=onnx detector.model_path=<YuNet .onnx file>.")
    options = dict(options)
    target, name = options.pop("_target_", None), options.pop("name", None)
    by_target = {f"{__name__}.{c.__name__}": c for c in DETECTORS.values()}
    detector_class = by_target.get(target) if target is not None else DETECTORS.get(name)
    if detector_class is None:
        raise ConfigError(f"detector {target or name!r} is not a face detector of maskdet: choose "
                          f"detector={'|'.join(DETECTORS)} (maskdet/conf/detector/).")
    try:
        return detector_class(**options)
    except TypeError as err:  # a setting the detector does not have (from Python; the CLI checked the keys)
        raise ConfigError(f"detector {detector_class.__name__}: {err}.") from None


def crop_box(face: Face, width: int, height: int, margin: float) -> tuple[int, int, int, int]:
    """The square crop (left, top, right, bottom) around ``face``, its side (1 + 2 * margin) times the box's,
    moved (not padded) to stay inside the frame, since training crops have no padded borders."""
    side = min(round(max(face.w, face.h) * (1 + 2 * margin)), width, height)
    left = int(np.clip(round(face.x + face.w / 2 - side / 2), 0, width - side))
    top = int(np.clip(round(face.y + face.h / 2 - side / 2), 0, height - side))
    return left, top, left + side, top + side


def face_crops(image: Image.Image, faces: Sequence[Face], size: int, margin: float) -> np.ndarray:
    """The faces' crops as uint8 NHWC, each resized exactly as ``images.load_resized`` resizes a file."""
    crops = []
    for face in faces:
        crop = image.crop(crop_box(face, image.width, image.height, margin))
        if crop.size != (size, size):
            crop = crop.resize((size, size), Image.BILINEAR)
        crops.append(np.asarray(crop, dtype=np.uint8))
    return np.stack(crops) if crops else np.zeros((0, size, size, 3), np.uint8)


@dataclass
class FrameResult:
    """The faces found in one frame and their class probabilities (same order)."""

    faces: list[Face]
    probs: np.ndarray


def analyse(model, detector, rgb: np.ndarray, batch_size: int = 64, what: str = "a frame") -> FrameResult:
    """Detect the faces in an RGB (HWC uint8) frame and classify each."""
    faces = detector.detect(rgb)
    crops = face_crops(Image.fromarray(rgb), faces, int(model.hparams.image_size), detector.margin)
    return FrameResult(faces, classify_crops(model, crops, batch_size, f"the faces in {what}"))


def _palette(names: Sequence[str]) -> dict[str, tuple[int, int, int]]:
    """Red for faces without a mask, distinct greens and blues for the mask classes."""
    others = [(40, 200, 80), (40, 140, 255), (255, 170, 20), (190, 80, 230), (20, 200, 200)]
    masked = [n for n in names if n != UNMASKED]
    return {UNMASKED: (230, 30, 30), **{n: others[i % len(others)] for i, n in enumerate(masked)}}


def draw(image: Image.Image, result: FrameResult, names: Sequence[str]) -> Image.Image:
    """``image`` with a coloured box and a "class confidence" label for every face (drawn in place)."""
    colours = _palette(names)
    pen = ImageDraw.Draw(image)
    for face, p in zip(result.faces, result.probs):
        name, colour = names[int(p.argmax())], colours[names[int(p.argmax())]]
        width = max(2, round(face.w / 40))
        pen.rectangle([face.x, face.y, face.x + face.w - 1, face.y + face.h - 1], outline=colour, width=width)
        font = ImageFont.load_default(size=max(11, min(28, round(face.w / 7))))
        text = f"{name} {p.max():.2f}"
        left, top, right, bottom = pen.textbbox((0, 0), text, font=font)
        label_w, label_h = right - left + 4, bottom - top + 4
        x = max(0, min(face.x, image.width - label_w))  # above the box, inside the image
        y = face.y - label_h if face.y >= label_h else min(face.y + face.h, image.height - label_h)
        pen.rectangle([x, y, x + label_w, y + label_h], fill=colour)
        pen.text((x + 2 - left, y + 2 - top), text, fill=(0, 0, 0) if sum(colour) > 400 else (255, 255, 255), font=font)
    return image


def _face_rows(source: str, frame: int, result: FrameResult, names: Sequence[str]) -> list[dict]:
    predicted = prediction_columns(result.probs, names)
    return [{"source": source, "frame": frame, "x": f.x, "y": f.y, "w": f.w, "h": f.h, "detector_score": f.score,
             **{column: values[i] for column, values in predicted.items()}}
            for i, f in enumerate(result.faces)]


def _frame_row(source: str, frame: int, time_s: float, result: FrameResult, names: Sequence[str]) -> dict:
    predicted = [names[int(p.argmax())] for p in result.probs]
    row = {"source": source, "frame": frame, "time_s": round(time_s, 3), "faces": len(predicted)}
    if UNMASKED in names:  # a checkpoint with other class names has no notion of "masked"
        masked = sum(n != UNMASKED for n in predicted)
        row.update(masked=masked, masked_share=masked / len(predicted) if predicted else float("nan"))
    return {**row, **{f"n_{n}": predicted.count(n) for n in names}}


@dataclass
class Scenes:
    """What ``detect_and_classify`` found: faces (one row per face), frames (one row per analysed frame
    or photo, with zero faces too), skipped (path, reason)."""

    faces: pd.DataFrame
    frames: pd.DataFrame
    skipped: list[dict]


def is_video(path: str | Path) -> bool:
    return Path(path).suffix.lower() in VIDEO_EXTENSIONS


def annotated_video_path(folder: Path, index: int, source: Path) -> Path:
    suffix = source.suffix.lower() if source.suffix.lower() in VIDEO_WRITERS else ".mp4"
    return folder / f"{index:05d}_{source.stem}{suffix}"


def _video(model, detector, path: Path, index: int, every_n: int, batch_size: int,
           folder: Path | None) -> tuple[list[dict], list[dict], list[dict]]:
    """Faces and frame rows of one video, and its skip entries; every ``every_n``-th frame is analysed and
    the frames between keep the last boxes in the annotated copy, which has every frame of the input."""
    cv2 = require_cv2()
    names = list(model.hparams.class_names)
    capture = cv2.VideoCapture(str(path))
    faces, frames, writer = [], [], None
    try:
        ok, bgr = capture.read() if capture.isOpened() else (False, None)
        if not ok:
            return [], [], [skip(path, "cannot be read as a video: OpenCV (FFmpeg) could not open it or decode a "
                                       "frame; it may be damaged or use a codec this OpenCV build lacks")]
        fps = capture.get(cv2.CAP_PROP_FPS) or 25.0
        expected = int(capture.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
        if folder is not None:
            target = annotated_video_path(folder, index, path)
            writer = cv2.VideoWriter(str(target), cv2.VideoWriter_fourcc(*VIDEO_WRITERS[target.suffix]), fps,
                                     (bgr.shape[1], bgr.shape[0]))
            if not writer.isOpened():
                raise ConfigError(f"OpenCV cannot write the annotated video {target} with the "
                                  f"{VIDEO_WRITERS[target.suffix]} codec; run with annotate=false to skip annotated copies.")
        number, result = 0, FrameResult([], np.zeros((0, len(names))))
        while ok:
            if number % every_n == 0:
                rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
                result = analyse(model, detector, rgb, batch_size, f"{display_path(path)} frame {number}")
                faces += _face_rows(str(path), number, result, names)
                frames.append(_frame_row(str(path), number, number / fps, result, names))
            if writer is not None:
                image = draw(Image.fromarray(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)), result, names)
                writer.write(cv2.cvtColor(np.asarray(image), cv2.COLOR_RGB2BGR))
            number += 1
            ok, bgr = capture.read()
    finally:
        capture.release()
        if writer is not None:
            writer.release()
    skipped = []
    if number < expected:  # the container promised more frames than could be decoded
        skipped.append(skip(path, f"only {number} of its {expected} frames could be decoded (damaged or cut "
                                  f"short); the rest were not analysed"))
    return faces, frames, skipped


def detect_and_classify(model, detector, files: Iterable[Path], batch_size: int = 64, every_n_frames: int = 1,
                        annotate_dir: Path | None = None) -> Scenes:
    """Faces found and classified in photo and video ``files``; annotated copies into ``annotate_dir``; progress
    on the console per file (``maskdet.progress``).

    Photos are turned upright by their EXIF orientation (as ``load_rgb`` does for training), so box
    coordinates are those of the upright photo. A file that cannot be read is skipped with its reason.
    """
    if int(every_n_frames) < 1:
        raise ConfigError(f"every_n_frames={every_n_frames} must be 1 or more (1 analyses every frame).")
    names = list(model.hparams.class_names)
    model.eval()
    if annotate_dir is not None:
        annotate_dir.mkdir(parents=True, exist_ok=True)
    faces, frames, skipped = [], [], []
    files = list(files)
    with progress(f"finding faces in {len(files):,} photos and videos", len(files), quiet=len(files) < 2) as advance:
        for index, path in enumerate(files):
            if is_video(path):
                rows, summary, problems = _video(model, detector, path, index, int(every_n_frames), batch_size,
                                                 annotate_dir)
                faces += rows
                frames += summary
                skipped += problems
            else:
                try:
                    image = load_rgb(path)
                except BadImageError as err:
                    skipped.append(skip(path, str(err)))
                    advance(1)
                    continue
                result = analyse(model, detector, np.asarray(image), batch_size, display_path(path))
                faces += _face_rows(str(path), 0, result, names)
                frames.append(_frame_row(str(path), 0, 0.0, result, names))
                if annotate_dir is not None:
                    draw(image, result, names).save(annotate_dir / f"{index:05d}_{path.stem}.jpg", quality=90)
            advance(1)
    face_columns = ["source", "frame", "x", "y", "w", "h", "detector_score", *prediction_schema(names)]
    frame_columns = ["source", "frame", "time_s", "faces", *(["masked", "masked_share"] if UNMASKED in names else []),
                     *[f"n_{n}" for n in names]]
    return Scenes(pd.DataFrame(faces, columns=face_columns), pd.DataFrame(frames, columns=frame_columns), skipped)
