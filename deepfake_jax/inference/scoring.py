"""Scores image files with a finished run: decode, optional face crop or alignment, the run's
evaluation view, its jitted eval step in padded batches, the validation threshold.
"""

from __future__ import annotations

import functools
import math
import os
from typing import Any

import jax
import numpy as np
import tqdm
from absl import logging

from deepfake_jax import runs
from deepfake_jax.data import augment_ops, input_pipeline, normalization
from deepfake_jax.data.image_io import (
    check_view_size,
    decode_image_rgb,
    list_images,
    read_image_file,
)
from deepfake_jax.evaluation import ensemble
from deepfake_jax.inference import explain
from deepfake_jax.parsing import faces, landmarks
from deepfake_jax.runs import find_threshold
from deepfake_jax.tasks import classification
from deepfake_jax.training import sharding, train_state

FACE_MARGIN = 0.3


UPSCALE_WARNING = 2.0  # a view made from an image whose short side is upscaled more is flagged


def load_view(path: str, crop_size: int, resize_to: int | None, face_crop: bool = False,
              aligner=None, info: dict | None = None
              ) -> tuple[np.ndarray | None, tuple[int, int, int, int] | None]:
    """(eval view, face box) of one file; (None, None) when face_crop finds no face.
    `aligner` (`landmarks.make_face_aligner`) is tried before the face crop.
    Raises ImageDecodeError (ImageSizeError over the per-image bounds) for unreadable files.
    `info`, when given, receives `upscale` (the factor the view's resize applied to the short
    side; > 1 means invented pixels) and `warning` (a sentence when it exceeds UPSCALE_WARNING,
    else "")."""
    image = decode_image_rgb(read_image_file(path), path)
    box = None
    aligned = aligner(image) if aligner is not None else None
    if aligned is not None:
        image, box = aligned
    elif face_crop:
        box = faces.detect_largest_face(image)
        if box is None:
            return None, None
        image = faces.crop_face(image, box, FACE_MARGIN)
    h, w = image.shape[:2]
    # eval_view resizes the short side to resize_to, then up to crop_size if still smaller.
    short = max(int(resize_to), int(crop_size)) if resize_to else max(int(crop_size), min(h, w))
    scale = check_view_size(w, h, short, path)  # raises before a resize could blow up
    if info is not None:
        info["upscale"] = scale
        info["warning"] = upscale_warning(w, h, short)
    return augment_ops.eval_view(image, crop_size, resize_to), box


def upscale_warning(width: int, height: int, short_side: int) -> str:
    """A sentence when resizing a width x height image to `short_side` upscales it more than
    UPSCALE_WARNING times, else ''."""
    scale = short_side / max(1, min(width, height))
    if scale <= UPSCALE_WARNING:
        return ""
    return (f"upscaled {scale:.3g}x ({width}x{height} px, short side to {short_side} px): the "
            "view is mostly interpolated pixels, so its score says little")


class Scorer:
    """The restored run's jitted eval step over padded, masked batches of eval views.

    Public: the web app (`deepfake_jax.app.loaded_runs`) scores uploads with it.
    """

    def __init__(self, config, workdir, checkpoint, use_ema, batch_size, devices):
        self.mesh = sharding.make_mesh(None, devices=jax.local_devices() if devices is None
                                       else devices)
        n = self.mesh.shape[sharding.DATA_AXIS]
        self.batch_size = max(1, math.ceil(max(1, int(batch_size)) / n)) * n
        graphdef, self.state, self.step = runs.restore_weights(config, workdir, checkpoint,
                                                                 self.mesh)
        evals = classification.make_eval_steps(config, self.mesh, graphdef,
                                      jax.tree.map(lambda x: x.sharding, self.state))
        self.eval_fn = evals[use_ema]
        mean, std = normalization.mean_std(config.input)
        self._heatmap_step = functools.partial(  # jitted on first use (--heatmaps)
            explain.make_heatmap_step, graphdef, use_ema=use_ema,
            mean=mean, std=std,
            in_shardings=(jax.tree.map(lambda x: x.sharding, self.state),
                          sharding.batch_sharding(self.mesh)),
            out_shardings=sharding.batch_sharding(self.mesh))
        logging.info("scoring with step %d (%s weights), batches of %d on %d device(s)",
                     self.step, "EMA" if use_ema else "raw", self.batch_size, n)

    def __call__(self, views: list[np.ndarray]) -> np.ndarray:
        k = len(views)
        images = np.zeros((self.batch_size, *views[0].shape), np.uint8)
        images[:k] = np.stack(views)
        batch = sharding.host_to_global(self.mesh, {
            "image": images, "label": np.zeros((self.batch_size,), np.int32)})
        p = self.eval_fn(self.state, batch)
        return np.asarray(p, np.float64)[:k]  # the padding's scores are dropped

    def heatmaps(self, views: list[np.ndarray]) -> np.ndarray:
        """(k, H, W) heatmaps in [0, 1] of the views (see `deepfake_jax.inference.explain`)."""
        if isinstance(self._heatmap_step, functools.partial):
            self._heatmap_step = self._heatmap_step()
        k = len(views)
        images = np.zeros((self.batch_size, *views[0].shape), np.uint8)
        images[:k] = np.stack(views)
        batch = sharding.host_to_global(self.mesh, {
            "image": images, "label": np.zeros((self.batch_size,), np.int32)})
        return np.asarray(self._heatmap_step(self.state, batch), np.float32)[:k]


def predict_paths(workdir: str, paths: list[str], *, checkpoint: str = "latest",
                  use_ema: bool | None = None, batch_size: int = 32, face_crop: bool = False,
                  recursive: bool = False, devices: list | None = None,
                  show_progress: bool = False, heatmaps_dir: str | None = None,
                  segmentation_workdir: str | None = None, face_align: bool = False,
                  not_listed: list[str] | None = None) -> list[dict[str, Any]]:
    """One row per input file (see COLUMNS; p_fake a float or None, face_box a tuple or None).

    `not_listed`, when given, receives a line per folder on what it held that has no row
    (files without an image extension, subfolders without `recursive`).

    `heatmaps_dir`: write overlays there (column `heatmap`); with `segmentation_workdir`, also
    `heat_share_<region>` / `area_share_<region>` columns (see the module docstring).

    The model is restored only once a readable image needs it, so a run with nothing readable
    costs no checkpoint restore or compilation.
    """
    workdir = os.path.abspath(workdir)
    config = runs.load_run_config(workdir, checkpoint)
    use_ema = bool(config.eval.use_ema) if use_ema is None else bool(use_ema)
    crop_size = input_pipeline.eval_crop_size(config.input)
    resize_to = config.input.get("resize_to") or None
    threshold, source = find_threshold(workdir, config.data.val_split)
    files = list_images(list(paths), recursive, not_listed)
    aligner = None
    if face_align:  # the Haar face crop stays the fallback (no dlib, or no face found by it)
        aligner, face_crop = landmarks.make_face_aligner(resize_to or crop_size), True
    if segmentation_workdir and not heatmaps_dir:
        raise ValueError("--segmentation_workdir gives region shares of heatmaps: "
                         "add --heatmaps OUTDIR")
    if heatmaps_dir:  # before any image is read, not at the first batch's heatmaps
        try:
            explain.check_heatmap_support(train_state.abstract_model(config))
        except ValueError as e:
            raise ValueError(f"--heatmaps with the {config.model_name!r} run in {workdir}: "
                             f"{e}") from e
    heatmap_writer = (explain.HeatmapWriter(heatmaps_dir, segmentation_workdir)
                      if heatmaps_dir else None)
    scorer = None
    rows, pending = [], []

    def flush():
        scores = scorer([view for _, view in pending])
        for (row, _), p in zip(pending, scores, strict=True):
            if not math.isfinite(p):  # never a label: NaN >= threshold is False ("real")
                row.update(status="error", error=f"the model returned p_fake = {p} for this "
                           "image (its weights or this input give no score)")
                continue
            row.update(p_fake=float(p), label="fake" if p >= threshold else "real")
        if heatmap_writer is not None:
            views = [view for _, view in pending]
            fields = heatmap_writer([row["path"] for row, _ in pending], views,
                                    scorer.heatmaps(views))
            for (row, _), extra in zip(pending, fields, strict=True):
                row.update(extra)
        pending.clear()

    for path in tqdm.tqdm(files, desc="predicting", unit="img", disable=not show_progress):
        row = {"path": path, "status": "ok", "p_fake": None, "label": "",
               "threshold": threshold, "threshold_source": source, "face_box": None,
               "heatmap": "", "error": "", "warning": ""}
        rows.append(row)
        info = {}
        try:
            view, box = load_view(path, crop_size, resize_to, face_crop, aligner, info)
        except OSError as e:
            row.update(status="error", error=f"cannot read file: {e.strerror or e}")
            continue
        except Exception as e:  # noqa: BLE001 - one bad file must not stop the others
            row.update(status="error", error=getattr(e, "reason", None) or
                       f"{type(e).__name__}: {e}")
            continue
        if view is None:
            row.update(status="no_face", error="no face found")
            continue
        row.update(face_box=box, warning=info.get("warning", ""))
        if scorer is None:
            scorer = Scorer(config, workdir, checkpoint, use_ema, batch_size, devices)
        pending.append((row, view))
        if len(pending) == scorer.batch_size:
            flush()
    if pending:
        flush()
    return rows


def predict_ensemble_paths(workdirs: list[str], paths: list[str], *,
                           not_listed: list[str] | None = None, heatmaps_dir: str | None = None,
                           segmentation_workdir: str | None = None, **options
                           ) -> list[dict[str, Any]]:
    """`predict_paths` rows for the ensemble of `workdirs` (`evaluation.ensemble`): every
    member scores every file with its own view; p_fake, label and threshold are the
    ensemble's, and a `p_fake_<run>` column holds each member's score."""
    if heatmaps_dir or segmentation_workdir:
        raise ValueError("--heatmaps explains one run: give a single --workdir")
    ens = ensemble.Ensemble.of_runs(workdirs)
    names = _member_names([m.workdir for m in ens.members])
    member_rows = [predict_paths(m.workdir, paths, not_listed=not_listed if k == 0 else None,
                                 **options) for k, m in enumerate(ens.members)]
    rows = []
    for rs in zip(*member_rows, strict=True):
        row = {**rs[0], "threshold": ens.threshold, "threshold_source": ens.describe(),
               **{f"p_fake_{n}": r["p_fake"] for n, r in zip(names, rs, strict=True)}}
        failed = next((r for r in rs if r["status"] != "ok"), None)
        if failed is not None:  # a file one member cannot score has no ensemble score
            row.update(status=failed["status"], error=failed["error"], p_fake=None, label="")
        else:
            p = float(ens.p_fake([np.array([r["p_fake"]]) for r in rs])[0])
            row.update(p_fake=p, label="fake" if p >= ens.threshold else "real")
        rows.append(row)
    return rows


def _member_names(workdirs: list[str]) -> list[str]:
    """Column names of the members: the folder names, numbered where two are equal."""
    base = [os.path.basename(os.path.normpath(w)) for w in workdirs]
    return [b if base.count(b) == 1 else f"{b}_{base[:i + 1].count(b)}"
            for i, b in enumerate(base)]
