"""Score image files with a trained run: p_fake and a real/fake label per image.

    python -m deepfake_jax.predict --workdir runs/demo [--workdir runs/other ...] IMAGE_OR_DIR...
        [--output preds.csv|.json]
        [--checkpoint latest|best|STEP] [--use_ema|--nouse_ema] [--batch_size 32]
        [--face_crop | --face_align] [--recursive] [--heatmaps OUTDIR] [--segmentation_workdir DIR]

Each file is scored as its record is in `evaluate` (`inference.scoring`: decode, optional face
crop or eye alignment, the run's evaluation view and jitted eval step); the label uses the
threshold the run chose on validation (`runs.find_threshold`).

Writes `<workdir>/predictions/predictions.csv` (or `--output`: `.csv` or `.json`, checked before
any work and never one of the inputs) with a row per file with an image extension: path, status
(ok / error / no_face), p_fake, label, threshold, threshold_source, face_box, heatmap, error,
warning. Unreadable files and images over the per-image bounds get an `error` row, never a
crash; a run without a single readable image still writes the file, then exits non-zero.

`--heatmaps OUTDIR` writes `<stem>_heatmap.png` overlays (Grad-CAM, or attention rollout for
ViT); with `--segmentation_workdir` (a face-parsing run) each row also gets the heatmap's and
the pixels' share per face region (`heat_share_<region>`, `area_share_<region>`).

Several `--workdir`s score with their ensemble (`evaluation.ensemble`): each run scores every
file; p_fake, label and threshold are the ensemble's, `p_fake_<run>` columns each run's.
"""

from __future__ import annotations

import csv
import functools
import json
import os
import sys
from collections import Counter
from typing import Any

from deepfake_jax import cli, console
from deepfake_jax.data.image_io import (
    list_images,
)
from deepfake_jax.inference.scoring import predict_ensemble_paths, predict_paths

COLUMNS = ("path", "status", "p_fake", "label", "threshold", "threshold_source", "face_box",
           "heatmap", "error", "warning")


OUTPUT_SUFFIXES = (".csv", ".json")


class NoReadableImagesError(RuntimeError):
    """Not one input could be read as an image (the predictions file is still written)."""


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


def build_parser() -> cli.ArgumentParser:
    p = cli.ArgumentParser("python -m deepfake_jax.predict", __doc__)
    p.add_argument("paths", nargs="+", metavar="IMAGE_OR_DIR", help="image files or folders")
    p.add_argument("--workdir", action="append", required=True,
                   help="a training workdir; repeat it to score with the ensemble of several "
                   "classifiers trained on the same data (evaluation.ensemble)")
    p.add_argument("--checkpoint", default="latest", help="latest, best or a step")
    p.add_bool("use_ema", None, "score with the EMA weights (default: the run's config.eval)")
    p.add_argument("--output", help="output file: .csv (default "
                   "<workdir>/predictions/predictions.csv) or .json")
    p.add_argument("--batch_size", type=int, default=32,
                   help="images per step (rounded up to the device count)")
    p.add_bool("face_crop", False, "crop the largest face (OpenCV Haar cascade) first; images "
               "without a face get status no_face")
    p.add_bool("face_align", False, "like --face_crop, but the face is aligned on its eyes "
               "(dlib landmarks, the `landmarks` extra); falls back to the Haar crop, with a "
               "warning, when dlib is not installed or finds no face")
    p.add_bool("recursive", False, "also walk the subfolders of the folders given")
    p.add_argument("--heatmaps", help="folder for <stem>_heatmap.png overlays (Grad-CAM / "
                   "attention rollout on the scored view)")
    p.add_argument("--segmentation_workdir", help="a face-parsing run: with --heatmaps, adds "
                   "the heatmap's share per face region")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    console.setup(args.verbose)
    output = args.output or default_output(args.workdir[0])
    not_listed = []
    try:
        check_output(output, args.paths, args.recursive)  # before any image is scored
        score = (functools.partial(predict_paths, args.workdir[0]) if len(args.workdir) == 1
                 else functools.partial(predict_ensemble_paths, args.workdir))
        rows = score(
            args.paths, checkpoint=args.checkpoint, use_ema=args.use_ema,
            batch_size=args.batch_size, face_crop=args.face_crop, recursive=args.recursive,
            show_progress=True, heatmaps_dir=args.heatmaps,
            segmentation_workdir=args.segmentation_workdir, face_align=args.face_align,
            not_listed=not_listed)
    except (FileNotFoundError, ValueError) as e:  # not a run, no checkpoint, bad --checkpoint
        sys.exit(f"error: {e}")
    output = write_predictions(rows, output)
    print(summary(rows, output, not_listed=not_listed))
    try:
        check_readable(rows, output)
    except NoReadableImagesError as e:
        sys.exit(f"error: {e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
