"""Run an exported detector with nothing but jax and numpy (no flax, no training code).

    from deepfake_jax.inference.serving import load_exported
    detector = load_exported("model.jaxexport")      # + model.jaxexport.json beside it
    p_fake = detector(images)                         # uint8 (N, S, S, 3) RGB, S = crop_size
    labels = detector.labels(p_fake)                  # "fake" / "real" at the run's threshold

`load_exported` checks the artifact against the sha256 its sidecar recorded and raises a
one-line ValueError naming the file when it is truncated, replaced or not an artifact.
`labels` refuses a NaN score (ValueError naming the images): NaN is no evidence of "real".

The artifact (`python -m deepfake_jax.export`) is a serialized `jax.export.Exported`: the
trained weights, the input normalisation, the network and the sigmoid/softmax, lowered to
StableHLO with a symbolic batch dimension. The sidecar JSON holds what a caller needs to know:
crop size, threshold chosen on the run's validation split, mean/std (already applied inside),
the model and checkpoint it came from.

Inputs must be the evaluation view the run was trained for: RGB uint8 of exactly
`crop_size` x `crop_size` (`center_crop` here reproduces the evaluation's center crop for
larger images; resizing, if the run used `resize_to`, is the caller's job).

This module deliberately imports nothing else from `deepfake_jax`, so it can be copied next to
the artifact into a serving environment that has only `jax` and `numpy`.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from typing import Any

import jax
import numpy as np
from jax import export as jax_export

FORMAT = "deepfake_jax.export/1"


def metadata_path(artifact_path: str) -> str:
    """The sidecar JSON of an artifact: `<artifact>.json`."""
    return artifact_path + ".json"


def center_crop(image: np.ndarray, size: int) -> np.ndarray:
    """The evaluation's center crop of an (H, W, 3) image with H, W >= size."""
    h, w = image.shape[:2]
    if h < size or w < size:
        raise ValueError(f"image of {h}x{w} px is smaller than the model's {size}x{size} input")
    top, left = (h - size) // 2, (w - size) // 2
    return image[top:top + size, left:left + size]


class ExportedDetector:
    """A deserialized detector: `detector(images) -> p_fake` (float32, one per image)."""

    def __init__(self, exported: jax_export.Exported, metadata: dict[str, Any]):
        self.exported = exported
        self.metadata = metadata
        self.crop_size = int(metadata["crop_size"])
        self.threshold = metadata.get("threshold")
        self._call = jax.jit(exported.call)

    def __call__(self, images) -> np.ndarray:
        images = np.asarray(images)
        if images.ndim == 3:
            images = images[None]
        s = self.crop_size
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != (s, s, 3):
            raise ValueError(f"expected uint8 RGB images of shape (N, {s}, {s}, 3) (the run's "
                             f"crop size), got {images.dtype} {images.shape}")
        if images.shape[0] == 0:
            return np.zeros((0,), np.float32)
        return np.asarray(self._call(images), np.float32)

    def labels(self, p_fake, threshold: float | None = None) -> list[str]:
        """"fake" where p_fake >= threshold (default: the run's validation threshold)."""
        threshold = self.threshold if threshold is None else threshold
        if threshold is None:
            raise ValueError("the export recorded no threshold (the run had no evaluation): "
                             "pass threshold=")
        scores = np.asarray(p_fake, np.float64).ravel()
        bad = [i for i, p in enumerate(scores) if not math.isfinite(p)]
        if bad:  # NaN >= threshold is False: it would silently read "real"
            shown = ", ".join(str(i) for i in bad[:10]) + (" ..." if len(bad) > 10 else "")
            raise ValueError(f"p_fake is not a number for {len(bad)} of {len(scores)} image(s) "
                             f"(positions {shown}): no label; check those inputs, or the "
                             "artifact's weights if every score is NaN")
        return ["fake" if p >= threshold else "real" for p in scores]


def load_exported(path: str) -> ExportedDetector:
    """Loads `path` (a `.jaxexport` artifact) and its sidecar `<path>.json`."""
    meta_path = metadata_path(path)
    for p in (path, meta_path):
        if not os.path.isfile(p):
            raise FileNotFoundError(f"{p} does not exist (write it with python -m "
                                    "deepfake_jax.export)")
    try:
        with open(meta_path) as f:
            metadata = json.load(f)
    except (OSError, ValueError) as e:
        raise ValueError(f"{meta_path}: cannot read the artifact's metadata ({e}): export the "
                         "run again") from None
    if not isinstance(metadata, dict) or metadata.get("format") != FORMAT:
        found = metadata.get("format") if isinstance(metadata, dict) else type(metadata).__name__
        raise ValueError(f"{meta_path}: format {found!r}, expected {FORMAT!r}")
    with open(path, "rb") as f:
        blob = f.read()
    expected = metadata.get("sha256")
    if expected and hashlib.sha256(blob).hexdigest() != expected:
        raise ValueError(f"{path}: the artifact ({len(blob)} bytes) does not match the sha256 "
                         f"recorded in {os.path.basename(meta_path)}: it is truncated or was "
                         "replaced; export the run again")
    try:
        exported = jax_export.deserialize(bytearray(blob))
    except Exception as e:  # noqa: BLE001 - struct.error, flatbuffers errors, ...
        raise ValueError(f"{path}: not a readable jax.export artifact ({type(e).__name__}: "
                         f"{e}); export the run again") from None
    return ExportedDetector(exported, metadata)
