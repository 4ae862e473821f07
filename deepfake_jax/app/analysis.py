"""Uploaded files -> per-image results (scores, pictures, messages) for the page.

Every file is checked (type, pixel count), decoded and turned into each run's eval view by
`predict.load_view` (same decoding, face crop and view as the predict command), then all views of
a request are scored together per run, in the run's jitted batches. A bad file becomes a result
with a readable `error`; it never stops the others.
"""

from __future__ import annotations

import base64
import dataclasses
import math
import os
import tempfile
from typing import Any

import cv2
import numpy as np
from werkzeug.utils import secure_filename

from deepfake_jax.data.image_io import ImageDecodeError, ImageSizeError, probe_image

ALLOWED_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp")
DISPLAY_SIDE = 160  # small views are enlarged (nearest neighbour: pixels stay honest) to this


@dataclasses.dataclass
class Upload:
    filename: str
    data: bytes


@dataclasses.dataclass
class Picture:
    caption: str
    data_uri: str


@dataclasses.dataclass
class RunResult:
    run: str
    p_fake: float | None = None
    label: str = ""
    threshold: float = 0.5
    error: str = ""


@dataclasses.dataclass
class ImageResult:
    filename: str
    error: str = ""  # set: the file could not be scored at all (the page shows this instead)
    face_box: tuple[int, int, int, int] | None = None
    scores: list[RunResult] = dataclasses.field(default_factory=list)
    pictures: list[Picture] = dataclasses.field(default_factory=list)
    regions: list[dict[str, Any]] = dataclasses.field(default_factory=list)  # one per run
    notes: list[str] = dataclasses.field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.error


def png_data_uri(rgb: np.ndarray, min_side: int = DISPLAY_SIDE) -> str:
    """A `data:image/png;base64,...` URI of a uint8 RGB array, enlarged by an integer factor
    (nearest neighbour) until its short side reaches `min_side`."""
    rgb = np.ascontiguousarray(rgb, np.uint8)
    factor = max(1, -(-min_side // max(1, min(rgb.shape[:2]))))
    if factor > 1:
        rgb = cv2.resize(rgb, (rgb.shape[1] * factor, rgb.shape[0] * factor),
                         interpolation=cv2.INTER_NEAREST)
    ok, buf = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    if not ok:
        raise RuntimeError("PNG encoding failed")
    return "data:image/png;base64," + base64.b64encode(buf.tobytes()).decode("ascii")


def check_upload(upload: Upload, max_pixels: int) -> str:
    """'' when the upload may be decoded, else the reason it is refused."""
    ext = os.path.splitext(upload.filename)[1].lower()
    if ext not in ALLOWED_EXTENSIONS:
        return (f"unsupported file type {ext or '(no extension)'!r}: upload "
                f"{', '.join(e.lstrip('.') for e in ALLOWED_EXTENSIONS)} images")
    if not upload.data:
        return "empty file (0 bytes)"
    try:
        info = probe_image(upload.data, upload.filename)  # header only; size bounds checked
    except ImageSizeError as e:
        return f"image refused: {e.reason}"
    except ImageDecodeError as e:
        return f"not a readable image: {e.reason}"
    pixels = int(info["width"]) * int(info["height"])
    if pixels > max_pixels:
        return (f"image too large: {info['width']}x{info['height']} = {pixels / 1e6:.3g} "
                f"megapixels; the limit is {max_pixels / 1e6:g}")
    return ""


def _view_error(e: Exception) -> str:
    if isinstance(e, ImageSizeError):
        return f"image refused: {e.reason}"
    if isinstance(e, ImageDecodeError):
        return f"not a readable image: {e.reason}"
    if isinstance(e, OSError):
        return f"cannot read file: {e.strerror or e}"
    return f"{type(e).__name__}: {e}"


def analyse(uploads: list[Upload], runs: list, *, face_crop: bool = False,
            max_pixels: int = 40_000_000, parser=None) -> list[ImageResult]:
    """One ImageResult per upload, in order. `runs` are `LoadedRun`s; `parser` an optional
    `FaceParsing` (see loaded_runs.py) for the parsing overlay and region shares."""
    results = [ImageResult(u.filename or "(unnamed file)") for u in uploads]
    views: list[list[np.ndarray | None]] = [[None] * len(uploads) for _ in runs]
    with tempfile.TemporaryDirectory(prefix="deepfake_jax_app_") as tmp:
        for i, (upload, result) in enumerate(zip(uploads, results, strict=True)):
            result.error = check_upload(upload, max_pixels)
            if result.error:
                continue
            # predict.load_view reads files: give it one, named like the upload.
            path = os.path.join(tmp, f"{i:04d}_{secure_filename(upload.filename) or 'upload'}")
            with open(path, "wb") as f:
                f.write(upload.data)
            for r, run in enumerate(runs):
                info = {}
                try:
                    view, box = run.load_view(path, face_crop, info)
                except Exception as e:  # noqa: BLE001 - a bad file gets a message, not a 500
                    result.error = _view_error(e)
                    break
                if view is None:
                    result.error = ("no face found (the face crop needs an upright, roughly "
                                    "frontal face; untick 'crop the face' to score the whole "
                                    "image)")
                    break
                views[r][i] = view
                result.face_box = box
                if info.get("warning") and info["warning"] not in result.notes:
                    result.notes.append(info["warning"])
    good = [i for i, res in enumerate(results) if res.ok]
    for r, run in enumerate(runs):
        batch = [views[r][i] for i in good]
        p_fake = run.score(batch) if batch else []
        heat = run.heatmaps(batch) if batch and run.explainer is not None else None
        labels = parser.parse_views(batch) if batch and parser is not None else None
        for k, i in enumerate(good):
            res, p = results[i], float(p_fake[k])
            if math.isfinite(p):
                res.scores.append(RunResult(run.name, p, run.label(p), run.threshold))
            else:  # never a label (NaN >= threshold is False: it would read "real")
                res.scores.append(RunResult(run.name, None, "", run.threshold, error=(
                    f"the model returned p_fake = {p} (its weights or this input give no "
                    "score)")))
            res.pictures.append(Picture(f"{run.name}: input ({batch[k].shape[1]}x"
                                        f"{batch[k].shape[0]} eval view)",
                                        png_data_uri(batch[k])))
            if heat is not None:
                res.pictures.append(Picture(f"{run.name}: heatmap ({run.explainer.method})",
                                            png_data_uri(run.explainer.overlay(batch[k],
                                                                               heat[k]))))
            if labels is not None:
                res.pictures.append(Picture(f"{run.name}: face parsing",
                                            png_data_uri(parser.overlay(batch[k], labels[k]))))
                if heat is not None:
                    res.regions.append({"run": run.name,
                                        "shares": run.explainer.region_shares(heat[k],
                                                                              labels[k])})
    return results
