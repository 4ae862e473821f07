"""Score image files with a trained run: p_fake and a real/fake label per image.

    python -m deepfake_jax.predict --workdir runs/demo IMAGE_OR_DIR... [--output preds.csv|.json]
        [--checkpoint latest|best|STEP] [--use_ema|--nouse_ema] [--batch_size 32]
        [--face-crop | --face-align] [--recursive] [--heatmaps OUTDIR] [--segmentation_workdir DIR]

Each image is decoded to RGB (any size, colour mode or format OpenCV/PIL read), optionally cropped
to its largest face (`--face-crop`, `deepfake_jax.faces`; `--face-align` rotates and scales it
so the eyes sit where they are in FFHQ/140k images, `deepfake_jax.landmarks`), then given exactly
the evaluation view (`augment.eval_view`) and scored by the trainer's jitted eval step
(`train.make_eval_steps`, which also normalises), so a file scores as its record does in
`evaluate`. The label uses the threshold the run's evaluation chose on validation
(`<workdir>/eval/valid/metrics.json`, else the newest `<workdir>/eval/*/*/metrics.json`, else 0.5
with a warning).

Writes `<workdir>/predictions/predictions.csv` (or `--output`: a `.csv` or `.json` file, the
suffix picks the format; checked before any work, and never one of the inputs) with one row per
input file: path, status (ok / error / no_face), p_fake, label, threshold, threshold_source,
face_box (x,y,w,h), heatmap (PNG path with --heatmaps), error, warning. A folder gives a row for
every file with an image extension (`image_io.LISTED_EXTENSIONS`: GIF, TIFF, broken links
included), and the summary names what else it held. Unreadable files get an `error` row, never
a crash; so do images over the per-image bounds (`image_io.MAX_PIXELS` before and after the
view's resize, `image_io.MAX_ASPECT_RATIO`), refused before they are decoded or resized. An
image upscaled more than UPSCALE_WARNING times into its view gets a `warning`. A run without a
single readable image still writes the file, then exits non-zero.

`--heatmaps OUTDIR` also writes `<OUTDIR>/<stem>_heatmap.png` per scored image: the evaluation
view with the model's heatmap on top (`deepfake_jax.explain`: Grad-CAM for the CNNs, attention
rollout for ViT; same weights and normalisation as the score), and fills the `heatmap` column
with its path. With `--segmentation_workdir DIR` (a face-parsing run, `deepfake_jax.segment`)
each row also gets `heat_share_<region>` / `area_share_<region>` columns: the share of the
heatmap and of the pixels on eyes, brows, nose, lips, skin, hair, background, others.
"""

from __future__ import annotations

import csv
import functools
import glob
import json
import math
import os
import sys
from collections import Counter
from typing import Any

import jax
import numpy as np
import tqdm
from absl import app, flags, logging

from deepfake_jax import (
    augment,
    console,
    evaluate,
    explain,
    faces,
    input_pipeline,
    landmarks,
    sharding,
    train,
)
from deepfake_jax.image_io import check_view_size, decode_image_rgb, list_images, read_image_file

# --workdir, --checkpoint and --use_ema are evaluate's flags (registered when it is imported).
FLAGS = flags.FLAGS
flags.DEFINE_string("output", None, "Output file: .csv (default "
                    "<workdir>/predictions/predictions.csv) or .json.")
flags.DEFINE_integer("batch_size", 32, "Images per step (rounded up to the device count).")
flags.DEFINE_bool("face_crop", False, "Crop the largest face (OpenCV Haar cascade) first; "
                  "images without a face get status no_face. Also spelled --face-crop.")
flags.DEFINE_bool("face_align", False, "Like --face_crop, but the face is aligned on its eyes "
                  "(dlib landmarks, the `landmarks` extra); falls back to the Haar crop, with a "
                  "warning, when dlib is not installed or finds no face. Also --face-align.")
flags.DEFINE_bool("recursive", False, "Also walk the subfolders of the folders given.")
flags.DEFINE_string("heatmaps", None, "Folder for <stem>_heatmap.png overlays (Grad-CAM / "
                    "attention rollout on the scored view).")
flags.DEFINE_string("segmentation_workdir", None, "A face-parsing run: with --heatmaps, adds "
                    "the heatmap's share per face region.")

COLUMNS = ("path", "status", "p_fake", "label", "threshold", "threshold_source", "face_box",
           "heatmap", "error", "warning")
DEFAULT_THRESHOLD = 0.5
FACE_MARGIN = 0.3
UPSCALE_WARNING = 2.0  # a view made from an image whose short side is upscaled more is flagged
OUTPUT_SUFFIXES = (".csv", ".json")


class NoReadableImagesError(RuntimeError):
    """Not one input could be read as an image (the predictions file is still written)."""


# ----------------------------------------------------------------------------- inputs


def find_threshold(workdir: str) -> tuple[float, str]:
    """(threshold, where it came from): the run's validation threshold (see module docstring)."""
    own = os.path.join(workdir, "eval", "valid", "metrics.json")
    candidates = [own] if os.path.isfile(own) else sorted(
        glob.glob(os.path.join(workdir, "eval", "*", "*", "metrics.json")),
        key=lambda p: (os.path.getmtime(p), p), reverse=True)
    for path in candidates:
        try:
            with open(path) as f:
                return float(json.load(f)["threshold"]), path
        except (OSError, ValueError, KeyError, TypeError) as e:
            logging.warning("ignoring %s: %s", path, e)
    logging.warning("no evaluation metrics.json with a threshold under %s/eval: using %.2f",
                    workdir, DEFAULT_THRESHOLD)
    return DEFAULT_THRESHOLD, f"default {DEFAULT_THRESHOLD} (no eval metrics.json found)"


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
    return augment.eval_view(image, crop_size, resize_to), box


def upscale_warning(width: int, height: int, short_side: int) -> str:
    """A sentence when resizing a width x height image to `short_side` upscales it more than
    UPSCALE_WARNING times, else ''."""
    scale = short_side / max(1, min(width, height))
    if scale <= UPSCALE_WARNING:
        return ""
    return (f"upscaled {scale:.3g}x ({width}x{height} px, short side to {short_side} px): the "
            "view is mostly interpolated pixels, so its score says little")


# ----------------------------------------------------------------------------- scoring


class Scorer:
    """The restored run's jitted eval step over padded, masked batches of eval views.

    Public: the web app (`deepfake_jax.app.runs`) scores uploads with it.
    """

    def __init__(self, config, workdir, checkpoint, use_ema, batch_size, devices):
        self.mesh = sharding.make_mesh(None, devices=jax.local_devices() if devices is None
                                       else devices)
        n = self.mesh.shape[sharding.DATA_AXIS]
        self.batch_size = max(1, math.ceil(max(1, int(batch_size)) / n)) * n
        graphdef, self.state, self.step = evaluate.restore_state(config, workdir, checkpoint,
                                                                 self.mesh)
        evals = train.make_eval_steps(config, self.mesh, graphdef,
                                      jax.tree.map(lambda x: x.sharding, self.state))
        self.eval_fn = evals[use_ema]
        self._heatmap_step = functools.partial(  # jitted on first use (--heatmaps)
            explain.make_heatmap_step, graphdef, use_ema=use_ema,
            mean=tuple(config.input.get("mean", train.IMAGENET_MEAN)),
            std=tuple(config.input.get("std", train.IMAGENET_STD)),
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
        """(k, H, W) heatmaps in [0, 1] of the views (see `deepfake_jax.explain`)."""
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
    config = evaluate.load_run_config(workdir, checkpoint)
    use_ema = bool(config.eval.use_ema) if use_ema is None else bool(use_ema)
    crop_size = input_pipeline.eval_crop_size(config.input)
    resize_to = config.input.get("resize_to") or None
    threshold, source = find_threshold(workdir)
    files = list_images(list(paths), recursive, not_listed)
    aligner = None
    if face_align:  # the Haar face crop stays the fallback (no dlib, or no face found by it)
        aligner, face_crop = landmarks.make_face_aligner(resize_to or crop_size), True
    if segmentation_workdir and not heatmaps_dir:
        raise ValueError("--segmentation_workdir gives region shares of heatmaps: "
                         "add --heatmaps OUTDIR")
    if heatmaps_dir:  # before any image is read, not at the first batch's heatmaps
        try:
            explain.check_heatmap_support(train.abstract_model(config))
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


# ----------------------------------------------------------------------------- outputs


def default_output(workdir: str) -> str:
    return os.path.join(os.path.abspath(workdir), "predictions", "predictions.csv")


def write_predictions(rows: list[dict[str, Any]], path: str) -> str:
    """Writes `rows` as CSV, or as a JSON list when `path` ends with .json; returns `path`."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    # optional per-run columns (region shares) after the fixed ones; blank where a row has none
    extra = list(dict.fromkeys(k for r in rows for k in r if k not in COLUMNS))
    if path.lower().endswith(".json"):
        out = [{k: (list(r[k]) if k == "face_box" and r[k] is not None else r.get(k))
                for k in (*COLUMNS, *extra)} for r in rows]
        with open(path, "w") as f:
            json.dump(out, f, indent=1)
            f.write("\n")
        return path
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow((*COLUMNS, *extra))
        for r in rows:
            writer.writerow([
                r["path"], r["status"],
                "" if r["p_fake"] is None else f"{r['p_fake']:.6f}",
                r["label"], f"{r['threshold']:.6f}", r["threshold_source"],
                "" if r["face_box"] is None else ",".join(str(v) for v in r["face_box"]),
                r["heatmap"], r["error"], r.get("warning", ""),
                *("" if r.get(k) is None else f"{r[k]:.6f}" for k in extra),
            ])
    return path


def summary(rows: list[dict[str, Any]], output: str, max_errors: int = 10,
            not_listed: list[str] | None = None) -> str:
    status = Counter(r["status"] for r in rows)
    labels = Counter(r["label"] for r in rows if r["status"] == "ok")
    lines = [
        f"{len(rows)} file(s): ok {status['ok']} (fake {labels['fake']}, real {labels['real']}),"
        f" no_face {status['no_face']}, error {status['error']}",
    ]
    if rows:
        lines.append(f"threshold {rows[0]['threshold']:.4f} from {rows[0]['threshold_source']}")
    errors = [r for r in rows if r["status"] == "error"]
    for r in errors[:max_errors]:
        lines.append(f"  error: {r['path']}: {r['error']}")
    if len(errors) > max_errors:
        lines.append(f"  ... and {len(errors) - max_errors} more errors (see the output)")
    warned = [r for r in rows if r.get("warning")]
    for r in warned[:max_errors]:
        lines.append(f"  warning: {r['path']}: {r['warning']}")
    if len(warned) > max_errors:
        lines.append(f"  ... and {len(warned) - max_errors} more warnings (see the output)")
    lines += [f"  {line}" for line in not_listed or []]
    lines.append(f"predictions written to {output}")
    return "\n".join(lines)


def check_output(output: str, paths: list[str], recursive: bool = False) -> None:
    """Raises ValueError, before any work, when `output` cannot be the predictions file: not a
    .csv/.json name, a folder, one of the input files, or in a place that cannot be written."""
    if os.path.isdir(output):
        raise ValueError(f"--output {output} is a folder: give a file name such as "
                         f"{os.path.join(output, 'predictions.csv')}")
    if not output.lower().endswith(OUTPUT_SUFFIXES):
        raise ValueError(f"--output {output}: give a .csv or .json file name (the suffix picks "
                         "the format)")
    real = os.path.realpath(output)
    listed = list_images(list(paths), recursive, warn=False)  # predict_paths warns later
    inputs = {os.path.realpath(p) for p in [*paths, *listed]}
    if real in inputs:
        raise ValueError(f"--output {output} is one of the input files and would be "
                         "overwritten: choose another name")
    parent = os.path.dirname(os.path.abspath(output))
    while not os.path.exists(parent):  # the nearest existing folder must be writable
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise ValueError(f"--output {output}: {parent} is a file, not a folder")
    if not os.access(parent, os.W_OK):
        raise ValueError(f"--output {output}: no permission to write in {parent}")
    if os.path.exists(output) and not os.access(output, os.W_OK):
        raise ValueError(f"--output {output}: the file exists and is not writable")


def check_readable(rows: list[dict[str, Any]], output: str) -> None:
    """Raises NoReadableImagesError when no input was a readable image."""
    if not any(r["status"] in ("ok", "no_face") for r in rows):
        raise NoReadableImagesError(
            f"no readable image among the {len(rows)} file(s) given; "
            f"the reasons are in {output}")


def _normalize_argv(argv: list[str]) -> list[str]:
    """Accepts --face-crop / --noface-crop for --face_crop (and --face-align likewise)."""
    alias = {"--face-crop": "--face_crop", "--noface-crop": "--noface_crop",
             "--face-align": "--face_align", "--noface-align": "--noface_align"}
    out = []
    for i, a in enumerate(argv):
        if a == "--":
            return out + argv[i:]
        name, eq, value = a.partition("=")
        out.append(alias.get(name, name) + eq + value)
    return out


def main(argv):
    if not FLAGS.workdir:
        sys.exit("--workdir is required")
    if len(argv) < 2:
        raise app.UsageError("give one or more image files or folders to score")
    console.setup()
    output = FLAGS.output or default_output(FLAGS.workdir)
    not_listed = []
    try:
        check_output(output, argv[1:], FLAGS.recursive)  # before any image is scored
        rows = predict_paths(
            FLAGS.workdir, argv[1:], checkpoint=FLAGS.checkpoint, use_ema=FLAGS.use_ema,
            batch_size=FLAGS.batch_size, face_crop=FLAGS.face_crop, recursive=FLAGS.recursive,
            show_progress=True, heatmaps_dir=FLAGS.heatmaps,
            segmentation_workdir=FLAGS.segmentation_workdir, face_align=FLAGS.face_align,
            not_listed=not_listed)
    except (FileNotFoundError, ValueError) as e:  # not a run, no checkpoint, bad --checkpoint
        sys.exit(f"error: {e}")
    output = write_predictions(rows, output)
    print(summary(rows, output, not_listed=not_listed))
    try:
        check_readable(rows, output)
    except NoReadableImagesError as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    app.run(main, argv=_normalize_argv(sys.argv))
