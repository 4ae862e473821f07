"""Facial landmarks: face box, points, and the left eye / right eye / nose / lips regions.

    backend = get_backend("dlib")                    # or get_backend("mediapipe", model_path=...)
    faces = backend.detect(rgb)                      # list[FaceLandmarks], largest face first
    drawn = draw_landmarks(rgb, faces)               # copy with points and region boxes drawn
    crops = crop_regions(rgb, faces[0])              # {"left_eye": array, ..., "lips": array}
    aligned = align_face(rgb, faces[0], size=256)    # eyes moved to CANONICAL_EYES

Backends (both optional; neither is needed by the rest of the package):

- ``dlib``: dlib's HOG face detector + the 68-point iBUG 300-W shape predictor, from the
  ``landmarks`` extra (``pip install 'deepfake_jax[landmarks]'``: ``dlib-bin`` and
  ``face-recognition-models``, which ships the model file). Runs offline on a CPU.
- ``mediapipe``: MediaPipe's Tasks API ``FaceLandmarker`` (478 points: the 468-point face mesh
  plus 10 iris points) with a ``face_landmarker.task`` file the user supplies; current MediaPipe
  releases ship no models, and older ones conflict with grain/TFDS, so it is not an extra.

Side convention (that of ``parsing.classes``): ``left_eye`` is the *subject's* left eye, on the
image's RIGHT side (larger x) in an unmirrored photo of a person facing the camera. Both iBUG's
68-point scheme and MediaPipe's face mesh name the eyes this way.

Coordinates are image pixels, x to the right and y down, as floats; boxes are integer
``(x, y, w, h)`` clipped to the image.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import logging
import math
import os
from collections.abc import Callable, Sequence
from typing import Protocol

import cv2
import numpy as np

__all__ = [
    "CANONICAL_EYES",
    "DLIB_REGIONS",
    "MEDIAPIPE_REGIONS",
    "REGIONS",
    "DlibBackend",
    "FaceLandmarks",
    "LandmarkBackend",
    "LandmarkBackendError",
    "MediaPipeBackend",
    "align_face",
    "alignment_matrix",
    "crop_regions",
    "draw_landmarks",
    "get_backend",
    "make_face_aligner",
    "region_box",
]


log = logging.getLogger(__name__)


REGIONS = ("left_eye", "right_eye", "nose", "lips")


REGION_MARGIN = 0.25  # region boxes grow by this fraction of the region's larger side, each side


# iBUG 300-W 68-point scheme (0-based): jaw 0-16, brows 17-26, nose bridge 27-30 + base 31-35,
# subject's right eye 36-41 (image left), subject's left eye 42-47, outer lips 48-59, inner 60-67.
DLIB_REGIONS: dict[str, tuple[int, ...]] = {
    "left_eye": tuple(range(42, 48)),
    "right_eye": tuple(range(36, 42)),
    "nose": tuple(range(27, 36)),
    "lips": tuple(range(48, 68)),
}


def _indices(edges: Sequence[tuple[int, int]]) -> tuple[int, ...]:
    return tuple(sorted({i for edge in edges for i in edge}))


# MediaPipe face mesh: the points of the FACEMESH_LEFT_EYE / RIGHT_EYE / NOSE / LIPS connection
# sets of mediapipe/python/solutions/face_mesh_connections.py (eye contours only, not the irises
# 468-477, so the eye centre is the contour's mean as with dlib).
MEDIAPIPE_REGIONS: dict[str, tuple[int, ...]] = {
    "left_eye": _indices([
        (263, 249), (249, 390), (390, 373), (373, 374), (374, 380), (380, 381), (381, 382),
        (382, 362), (263, 466), (466, 388), (388, 387), (387, 386), (386, 385), (385, 384),
        (384, 398), (398, 362)]),
    "right_eye": _indices([
        (33, 7), (7, 163), (163, 144), (144, 145), (145, 153), (153, 154), (154, 155),
        (155, 133), (33, 246), (246, 161), (161, 160), (160, 159), (159, 158), (158, 157),
        (157, 173), (173, 133)]),
    "nose": _indices([
        (168, 6), (6, 197), (197, 195), (195, 5), (5, 4), (4, 1), (1, 19), (19, 94), (94, 2),
        (98, 97), (97, 2), (2, 326), (326, 327), (327, 294), (294, 278), (278, 344), (344, 440),
        (440, 275), (275, 4), (4, 45), (45, 220), (220, 115), (115, 48), (48, 64), (64, 98)]),
    "lips": _indices([
        (61, 146), (146, 91), (91, 181), (181, 84), (84, 17), (17, 314), (314, 405), (405, 321),
        (321, 375), (375, 291), (61, 185), (185, 40), (40, 39), (39, 37), (37, 0), (0, 267),
        (267, 269), (269, 270), (270, 409), (409, 291), (78, 95), (95, 88), (88, 178),
        (178, 87), (87, 14), (14, 317), (317, 402), (402, 318), (318, 324), (324, 308),
        (78, 191), (191, 80), (80, 81), (81, 82), (82, 13), (13, 312), (312, 311), (311, 310),
        (310, 415), (415, 308)]),
}


MEDIAPIPE_NUM_POINTS = 478


# Where align_face puts the eye centres, as fractions of the output side: the mean eye positions
# of FFHQ-aligned images (the 140k set's reals; its StyleGAN fakes share the alignment), so an
# aligned crop looks like the images the detectors are trained on. Measured with the dlib
# backend on ../shared/data/faces-sample/140k (see README "Facial landmarks").
CANONICAL_EYES: dict[str, tuple[float, float]] = {
    "left_eye": (0.622, 0.475),  # subject's left eye: image right
    "right_eye": (0.378, 0.475),
}


Box = tuple[int, int, int, int]


class LandmarkBackendError(RuntimeError):
    """A landmark backend cannot run: its package or model file is missing or unusable."""


@dataclasses.dataclass(frozen=True)
class FaceLandmarks:
    """One face: detector box, all landmark points, and which points make each region.

    `points` is (K, 2) float32 (x, y) in image pixels (K = 68 for dlib, 478 for MediaPipe);
    `regions` maps each name of REGIONS to indices into `points`. `score` is the detector's
    confidence where the backend gives one (dlib: HOG SVM margin, > 0 = face), else None.
    """

    box: Box
    points: np.ndarray
    regions: dict[str, tuple[int, ...]]
    score: float | None = None
    backend: str = ""

    def region_points(self, name: str) -> np.ndarray:
        if name not in self.regions:
            raise KeyError(f"unknown region {name!r}; regions are {sorted(self.regions)}")
        return self.points[list(self.regions[name])]

    def region_box(self, name: str, image_shape: tuple[int, ...],
                   margin: float = REGION_MARGIN) -> Box:
        return region_box(self.region_points(name), image_shape, margin)

    def eye_centres(self) -> tuple[np.ndarray, np.ndarray]:
        """(left eye, right eye) centres: the mean of each eye's contour points."""
        return (self.region_points("left_eye").mean(0), self.region_points("right_eye").mean(0))

    def to_json(self, image_shape: tuple[int, ...], margin: float = REGION_MARGIN) -> dict:
        return {
            "box": list(self.box),
            "score": self.score,
            "backend": self.backend,
            "points": np.round(self.points.astype(np.float64), 2).tolist(),
            "regions": {name: {"indices": list(idx),
                               "box": list(self.region_box(name, image_shape, margin))}
                        for name, idx in self.regions.items()},
        }


def region_box(points: np.ndarray, image_shape: tuple[int, ...],
               margin: float = REGION_MARGIN) -> Box:
    """Integer (x, y, w, h) around `points` grown by `margin` x the larger side of their tight
    box on every side, clipped to the image. Every point inside the image lies inside it
    (the pixel containing the point is covered); w or h is 0 when the points lie outside."""
    height, width = image_shape[:2]
    pts = np.asarray(points, np.float64).reshape(-1, 2)
    lo, hi = pts.min(0), pts.max(0)
    pad = margin * float(max(hi - lo))
    x0 = min(max(math.floor(lo[0] - pad), 0), width)
    y0 = min(max(math.floor(lo[1] - pad), 0), height)
    x1 = min(max(math.floor(hi[0] + pad) + 1, 0), width)
    y1 = min(max(math.floor(hi[1] + pad) + 1, 0), height)
    return x0, y0, max(x1 - x0, 0), max(y1 - y0, 0)


def _clip_box(x0: float, y0: float, x1: float, y1: float, image_shape: tuple[int, ...]) -> Box:
    height, width = image_shape[:2]
    left, top = min(max(int(round(x0)), 0), width), min(max(int(round(y0)), 0), height)
    right, bottom = min(max(int(round(x1)), 0), width), min(max(int(round(y1)), 0), height)
    return left, top, max(right - left, 0), max(bottom - top, 0)


def _check_image(image: np.ndarray) -> np.ndarray:
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 \
            or image.shape[2] != 3:
        desc = f"{image.dtype} {image.shape}" if isinstance(image, np.ndarray) else type(image)
        raise ValueError(f"expected a uint8 (H, W, 3) RGB image, got {desc}")
    return np.ascontiguousarray(image)


class LandmarkBackend(Protocol):
    name: str

    def detect(self, image: np.ndarray) -> list[FaceLandmarks]:
        """All faces in a uint8 (H, W, 3) RGB image, largest box first; [] when none."""
        ...


def _missing(package: str, what: str) -> LandmarkBackendError:
    return LandmarkBackendError(
        f"the {what} landmark backend needs the Python package {package!r}, which is not "
        "installed; " + ("pip install 'deepfake_jax[landmarks]' (dlib-bin + "
                         "face-recognition-models)" if what == "dlib" else
                         "pip install mediapipe (not an extra: see README 'Facial landmarks')"))


def dlib_model_path() -> str:
    """The 68-point model file shipped by `face-recognition-models`, found without importing
    the package (its __init__ needs pkg_resources, which setuptools >= 81 no longer has)."""
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise _missing("face-recognition-models", "dlib")
    path = os.path.join(list(spec.submodule_search_locations)[0], "models",
                        "shape_predictor_68_face_landmarks.dat")
    if not os.path.isfile(path):
        raise LandmarkBackendError(f"face-recognition-models is installed but has no {path}")
    return path


class DlibBackend:
    """dlib's HOG frontal-face detector + 68-point shape predictor (see DLIB_REGIONS).

    `upsample` doubles the image that many times before detecting (HOG finds faces of about
    80 px and up; 1 finds 40 px faces at 4x the cost). `threshold` is the HOG SVM margin a
    detection needs (dlib's default 0; negative finds more faces and more false ones).
    """

    name = "dlib"

    def __init__(self, model_path: str | None = None, upsample: int = 1, threshold: float = 0.0):
        try:
            import dlib
        except ImportError:
            raise _missing("dlib-bin", "dlib") from None
        path = model_path or dlib_model_path()
        if not os.path.isfile(path):
            raise LandmarkBackendError(f"dlib 68-point model file not found: {path}")
        self._dlib = dlib
        self._detector = dlib.get_frontal_face_detector()
        try:
            self._predictor = dlib.shape_predictor(path)
        except RuntimeError as e:
            raise LandmarkBackendError(f"cannot load dlib shape predictor {path}: {e}") from e
        self.upsample = int(upsample)
        self.threshold = float(threshold)

    def detect(self, image: np.ndarray) -> list[FaceLandmarks]:
        image = _check_image(image)
        rects, scores, _ = self._detector.run(image, self.upsample, self.threshold)
        faces = [self._landmarks(image, r, float(s)) for r, s in zip(rects, scores, strict=True)]
        return sorted(faces, key=lambda f: (-f.box[2] * f.box[3], f.box[1], f.box[0]))

    def landmarks_in_box(self, image: np.ndarray, box: Box) -> FaceLandmarks:
        """The 68 points of the face in `box` (x, y, w, h), skipping detection (for a face box
        known from elsewhere; the predictor was trained on HOG boxes, so similar boxes work
        best)."""
        image = _check_image(image)
        x, y, w, h = (int(v) for v in box)
        return self._landmarks(image, self._dlib.rectangle(x, y, x + w, y + h), None)

    def _landmarks(self, image: np.ndarray, rect, score: float | None) -> FaceLandmarks:
        shape = self._predictor(image, rect)
        points = np.array([(p.x, p.y) for p in shape.parts()], np.float32)
        box = _clip_box(rect.left(), rect.top(), rect.right() + 1, rect.bottom() + 1, image.shape)
        return FaceLandmarks(box, points, dict(DLIB_REGIONS), score, self.name)


class MediaPipeBackend:
    """MediaPipe Tasks API FaceLandmarker (478 points) with a user-supplied model file
    (`face_landmarker.task`, published by Google with MediaPipe's face landmarker docs).
    The face box is the points' bounding box (the task returns no detector box or score)."""

    name = "mediapipe"

    def __init__(self, model_path: str | None, num_faces: int = 4):
        if not model_path:
            raise LandmarkBackendError(
                "the mediapipe landmark backend needs a model file: pass model_path / --model "
                "with a face_landmarker.task file (MediaPipe's packages ship no face models)")
        if not os.path.isfile(model_path):
            raise LandmarkBackendError(
                f"mediapipe model file not found: {model_path} (expected a face_landmarker.task "
                "file, see MediaPipe's Face Landmarker guide)")
        try:
            import mediapipe as mp
        except ImportError:
            raise _missing("mediapipe", "mediapipe") from None
        self._mp = mp
        options = mp.tasks.vision.FaceLandmarkerOptions(
            base_options=mp.tasks.BaseOptions(model_asset_path=model_path),
            running_mode=mp.tasks.vision.RunningMode.IMAGE, num_faces=int(num_faces))
        try:
            self._landmarker = mp.tasks.vision.FaceLandmarker.create_from_options(options)
        except Exception as e:  # noqa: BLE001 - MediaPipe raises several types for bad files
            raise LandmarkBackendError(
                f"mediapipe cannot load {model_path} as a FaceLandmarker model: {e}") from e

    def detect(self, image: np.ndarray) -> list[FaceLandmarks]:
        image = _check_image(image)
        height, width = image.shape[:2]
        result = self._landmarker.detect(
            self._mp.Image(image_format=self._mp.ImageFormat.SRGB, data=image))
        faces = []
        for marks in result.face_landmarks:
            points = np.array([(m.x * width, m.y * height) for m in marks], np.float32)
            if len(points) < MEDIAPIPE_NUM_POINTS - 10:  # a model without the face mesh
                raise LandmarkBackendError(
                    f"mediapipe model returned {len(points)} points, expected 468 or 478")
            lo, hi = points.min(0), points.max(0)
            box = _clip_box(lo[0], lo[1], hi[0] + 1, hi[1] + 1, image.shape)
            faces.append(FaceLandmarks(box, points, dict(MEDIAPIPE_REGIONS), None, self.name))
        return sorted(faces, key=lambda f: (-f.box[2] * f.box[3], f.box[1], f.box[0]))

    def close(self) -> None:
        """Frees MediaPipe's graph now (it otherwise closes itself when garbage-collected)."""
        self._landmarker.close()


BACKENDS = ("dlib", "mediapipe")


def get_backend(name: str = "dlib", model_path: str | None = None, **kwargs) -> LandmarkBackend:
    """The backend called `name` ("dlib" or "mediapipe"); `model_path` overrides dlib's model
    file and is required for mediapipe. Raises LandmarkBackendError when it cannot run."""
    if name == "dlib":
        return DlibBackend(model_path, **kwargs)
    if name == "mediapipe":
        return MediaPipeBackend(model_path, **kwargs)
    raise ValueError(f"unknown landmark backend {name!r}; choose one of {', '.join(BACKENDS)}")


# RGB colours of the drawing; the face box is white.
REGION_COLOURS: dict[str, tuple[int, int, int]] = {
    "left_eye": (0, 220, 0), "right_eye": (0, 160, 255), "nose": (255, 200, 0),
    "lips": (255, 0, 160),
}


OTHER_POINTS_COLOUR = (255, 255, 255)


def draw_landmarks(image: np.ndarray, faces: Sequence[FaceLandmarks], *, boxes: bool = True,
                   margin: float = REGION_MARGIN) -> np.ndarray:
    """A copy of `image` with each face's points (region points in REGION_COLOURS, others
    white) and, with `boxes`, its face box (white) and region boxes (region colours)."""
    out = _check_image(image).copy()
    radius = max(1, round(min(out.shape[:2]) / 256))
    thickness = max(1, round(min(out.shape[:2]) / 300))
    for face in faces:
        colours = [OTHER_POINTS_COLOUR] * len(face.points)
        for name, idx in face.regions.items():
            for i in idx:
                colours[i] = REGION_COLOURS.get(name, OTHER_POINTS_COLOUR)
        if boxes:
            _rectangle(out, face.box, OTHER_POINTS_COLOUR, thickness)
            for name in face.regions:
                _rectangle(out, face.region_box(name, out.shape, margin),
                           REGION_COLOURS.get(name, OTHER_POINTS_COLOUR), thickness)
        for (x, y), colour in zip(face.points, colours, strict=True):
            if np.isfinite(x) and np.isfinite(y):
                cv2.circle(out, (int(round(x)), int(round(y))), radius, colour, -1, cv2.LINE_8)
    return out


def _rectangle(image: np.ndarray, box: Box, colour, thickness: int) -> None:
    x, y, w, h = box
    if w > 0 and h > 0:
        cv2.rectangle(image, (x, y), (x + w - 1, y + h - 1), colour, thickness, cv2.LINE_8)


def crop_regions(image: np.ndarray, face: FaceLandmarks,
                 margin: float = REGION_MARGIN) -> dict[str, np.ndarray]:
    """{region: pixels of its box} (C-contiguous copies, no resampling); a region whose box
    lies outside the image gives an empty (0-sized) array."""
    image = _check_image(image)
    crops = {}
    for name in face.regions:
        x, y, w, h = face.region_box(name, image.shape, margin)
        crops[name] = np.ascontiguousarray(image[y : y + h, x : x + w])
    return crops


def alignment_matrix(face: FaceLandmarks, size: int,
                     eyes: dict[str, tuple[float, float]] | None = None) -> np.ndarray:
    """The 2x3 similarity transform (rotation, uniform scale, translation) that moves the face's
    eye centres exactly onto `eyes` (fractions of `size`; default CANONICAL_EYES)."""
    eyes = eyes or CANONICAL_EYES
    src_left, src_right = (complex(*p) for p in face.eye_centres())
    dst_left = complex(*eyes["left_eye"]) * size
    dst_right = complex(*eyes["right_eye"]) * size
    if abs(src_left - src_right) < 1e-6:
        raise ValueError("cannot align a face whose eye centres coincide")
    # z -> a z + b in the complex plane is exactly a similarity transform.
    a = (dst_left - dst_right) / (src_left - src_right)
    b = dst_right - a * src_right
    return np.array([[a.real, -a.imag, b.real], [a.imag, a.real, b.imag]], np.float64)


def align_face(image: np.ndarray, face: FaceLandmarks, size: int = 256,
               eyes: dict[str, tuple[float, float]] | None = None) -> np.ndarray:
    """A (size, size, 3) crop, rotated and scaled so the eyes sit at `eyes` (default
    CANONICAL_EYES); pixels from outside the image are black. Bilinear resampling, after a
    blur matched to the scale when shrinking by more than 2x (avoids aliasing)."""
    image = _check_image(image)
    matrix = alignment_matrix(face, size, eyes)
    scale = math.hypot(matrix[0, 0], matrix[1, 0])
    if scale < 0.5:
        image = cv2.GaussianBlur(image, (0, 0), 0.5 / scale)
    return cv2.warpAffine(image, matrix, (int(size), int(size)), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=(0, 0, 0))


def make_face_aligner(size: int, backend: str = "dlib", model_path: str | None = None
                      ) -> Callable[[np.ndarray], tuple[np.ndarray, Box] | None] | None:
    """For `predict --face_align`: a function image -> (aligned crop of the largest face, its
    box), or None when no face is found; None (with a warning) when the backend cannot run."""
    try:
        lm = get_backend(backend, model_path)
    except LandmarkBackendError as e:
        log.warning("face alignment is off, using the Haar face crop instead: %s", e)
        return None

    def align(image: np.ndarray) -> tuple[np.ndarray, Box] | None:
        faces = lm.detect(image)
        if not faces:
            return None
        return align_face(image, faces[0], size), faces[0].box

    return align


CSV_COLUMNS = ("path", "status", "faces", "face_box", *(f"{r}_box" for r in REGIONS), "json",
               "error")
