"""Face parsing of image files with a trained run (`config.task = "segmentation"`).

    python -m deepfake_jax.segment --workdir runs/parsing IMAGE_OR_DIR... --output OUTDIR
        [--checkpoint latest|best|STEP] [--face_crop] [--recursive] [--batch_size 16]
        [--min_face_fraction 0.02]

Per readable image with a face, in OUTDIR: `<stem>_mask.png` (colour-coded classes,
`classes.PALETTE`), `<stem>_labels.png` (class indices, 8-bit), `<stem>_overlay.png`,
crops `<stem>_<region>.png` for left_eye, right_eye, nose and lips (where present), and
`<stem>.json`: status, image size, face box, per-region box [x0, y0, x1, y1] (exclusive end)
and area in pixels, per-class areas. Every input file gets a JSON with its status:

    ok        parsed; the files above were written
    no_face   no face: with --face_crop, OpenCV's detector found none; otherwise the parser
              labelled less than --min_face_fraction of the image as face classes
    error     the file could not be read or decoded (the reason is in the JSON and summary)

`summary.json` lists every file; a one-screen summary is printed at the end. Exit status 1 only
if no input was readable.

Python API (the heatmap explainer and the web app use it)::

    parser = FaceParser(workdir, checkpoint="latest")   # restores and compiles once
    labels = parser.parse(images_uint8_nhwc)             # int32 (N, H, W) at the input size"""

from __future__ import annotations

import argparse
import os
import sys
from collections import Counter
from typing import Any

import cv2
import numpy as np
import tqdm

from deepfake_jax import cli, console, json_io
from deepfake_jax.data.image_io import (
    ImageDecodeError,
    decode_image_rgb,
    list_images,
    read_image_file,
)
from deepfake_jax.parsing import classes, faces, label_maps
from deepfake_jax.parsing.parser import FaceParser

FACE_MARGIN = 0.3


# Classes that make a face (not background, clothes, neck or hair): used to decide no_face.
FACE_CLASSES = ("skin", "l_brow", "r_brow", "l_eye", "r_eye", "nose", "mouth", "u_lip", "l_lip")


def _write_png(path: str, rgb_or_gray: np.ndarray) -> str:
    img = rgb_or_gray if rgb_or_gray.ndim == 2 else cv2.cvtColor(rgb_or_gray, cv2.COLOR_RGB2BGR)
    if not cv2.imwrite(path, img):
        raise OSError(f"cannot write {path}")
    return path


class _Stems:
    """Unique output stems: a repeated file name gets _2, _3, ..."""

    def __init__(self):
        self.used: set[str] = set()

    def __call__(self, path: str) -> str:
        base = os.path.splitext(os.path.basename(path))[0] or "image"
        stem, n = base, 1
        while stem in self.used:
            n += 1
            stem = f"{base}_{n}"
        self.used.add(stem)
        return stem


def face_fraction(label_map: np.ndarray) -> float:
    ids = [classes.CLASS_INDEX[c] for c in FACE_CLASSES]
    return float(np.isin(label_map, ids).mean())


def write_outputs(out_dir: str, stem: str, image: np.ndarray, label_map: np.ndarray,
                  row: dict[str, Any]) -> dict[str, Any]:
    """Mask, labels, overlay and region crops of one parsed image; fills `row`."""
    files = {
        "mask": _write_png(os.path.join(out_dir, f"{stem}_mask.png"),
                           label_maps.colorize(label_map)),
        "labels": _write_png(os.path.join(out_dir, f"{stem}_labels.png"),
                             label_map.astype(np.uint8)),
        "overlay": _write_png(os.path.join(out_dir, f"{stem}_overlay.png"),
                              label_maps.overlay_labels(image, label_map)),
    }
    regions = label_maps.region_boxes(label_map)
    for name, region in regions.items():
        if region["box"] is not None:
            crop = label_maps.crop_box(image, region["box"])
            region["crop"] = files[name] = _write_png(
                os.path.join(out_dir, f"{stem}_{name}.png"), crop)
    counts = np.bincount(label_map.reshape(-1), minlength=len(classes.PARSING_CLASSES))
    row.update(regions=regions, files=files, class_areas={
        n: int(c) for n, c in zip(classes.PARSING_CLASSES, counts, strict=False) if c})
    return row


def segment_paths(workdir: str, paths: list[str], out_dir: str, *, checkpoint: str = "latest",
                  face_crop: bool = False, recursive: bool = False, batch_size: int = 16,
                  min_face_fraction: float = 0.02, show_progress: bool = False,
                  parser: FaceParser | None = None) -> list[dict[str, Any]]:
    """Parses every image file; one row (also `<stem>.json`) per file, never raises for a bad
    file. The model is restored only when a readable image needs it."""
    os.makedirs(out_dir, exist_ok=True)
    files = list_images(paths, recursive)
    stems = _Stems()
    rows: list[dict[str, Any]] = []
    pending: list[tuple[dict[str, Any], np.ndarray]] = []

    def finish(row):
        json_io.write_json(row, os.path.join(out_dir, f"{row['stem']}.json"))
        rows.append(row)

    def flush():
        nonlocal parser
        if not pending:
            return
        if parser is None:
            parser = FaceParser(workdir, checkpoint=checkpoint, batch_size=batch_size)
        by_size: dict[tuple, list[int]] = {}
        for i, (_, view) in enumerate(pending):
            by_size.setdefault(view.shape, []).append(i)
        for idx in by_size.values():
            labels = parser.parse(np.stack([pending[i][1] for i in idx]))
            for i, lab in zip(idx, labels, strict=True):
                row, view = pending[i]
                frac = face_fraction(lab)
                row["face_fraction"] = round(frac, 4)
                if frac < min_face_fraction and not face_crop:
                    row.update(status="no_face", error=f"face classes cover {frac:.1%} of the "
                               f"image (< --min_face_fraction {min_face_fraction:.0%})")
                else:
                    write_outputs(out_dir, row["stem"], view, lab, row)
                finish(row)
        pending.clear()

    bar = tqdm.tqdm(files, desc="segment", unit="img", disable=not show_progress)
    for path in bar:
        row: dict[str, Any] = {"path": path, "stem": stems(path), "status": "ok", "error": None}
        try:
            image = decode_image_rgb(read_image_file(path), path)  # bounded, see image_io
        except (OSError, ImageDecodeError) as e:
            row.update(status="error", error=str(e) if isinstance(e, ImageDecodeError)
                       else f"cannot read {path}: {e.strerror or e}")
            finish(row)
            continue
        row["image_size"] = [int(image.shape[1]), int(image.shape[0])]
        view = image
        if face_crop:
            box = faces.detect_largest_face(image)
            if box is None:
                row.update(status="no_face", error="no face found by the OpenCV detector")
                finish(row)
                continue
            left, top, w, h = faces.square_box(box, image.shape, FACE_MARGIN)
            row["face_box"] = [left, top, left + w, top + h]
            view = np.ascontiguousarray(image[top:top + h, left:left + w])
        pending.append((row, view))
        if len(pending) >= batch_size:
            flush()
    flush()
    order = {path: i for i, path in enumerate(files)}
    rows.sort(key=lambda r: order[r["path"]])  # no-face/error rows were finished early
    json_io.write_json({"workdir": os.path.abspath(workdir), "files": rows},
                            os.path.join(out_dir, "summary.json"))
    return rows


def summary(rows: list[dict[str, Any]], out_dir: str, max_errors: int = 5) -> str:
    counts = Counter(r["status"] for r in rows)
    lines = [f"segmented {len(rows)} file(s): {counts.get('ok', 0)} ok, "
             f"{counts.get('no_face', 0)} without a face, {counts.get('error', 0)} unreadable"]
    ok = [r for r in rows if r["status"] == "ok"]
    if ok:
        found = Counter(k for r in ok for k, v in r["regions"].items() if v["box"])
        lines.append("regions found: " + ", ".join(f"{k} {found.get(k, 0)}/{len(ok)}"
                                                   for k in classes.REGIONS))
    bad = [r for r in rows if r["status"] != "ok"]
    for r in bad[:max_errors]:
        lines.append(f"  {r['status']:8s} {r['path']}: {r['error']}")
    if len(bad) > max_errors:
        lines.append(f"  ... and {len(bad) - max_errors} more (see summary.json)")
    lines.append(f"outputs: {os.path.abspath(out_dir)} (summary.json, <stem>.json, masks, "
                 "overlays, crops)")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = cli.ArgumentParser("python -m deepfake_jax.segment", __doc__)
    p.add_argument("inputs", nargs="+", metavar="IMAGE_OR_DIR")
    p.add_argument("--workdir", required=True, help="a face-parsing training run")
    p.add_argument("--output", required=True, help="folder for masks, overlays, crops, JSON")
    p.add_argument("--checkpoint", default="latest", help="latest, best or a step number")
    p.add_bool("face_crop", False,
               "parse the largest detected face (OpenCV) instead of the whole image")
    p.add_bool("recursive", False, "also walk the subfolders of the folders given")
    p.add_argument("--batch_size", type=int, default=16)
    p.add_argument("--min_face_fraction", type=float, default=0.02,
                   help="below this share of face-class pixels an image has no face")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    console.setup(args.verbose)
    try:
        rows = segment_paths(args.workdir, args.inputs, args.output, checkpoint=args.checkpoint,
                             face_crop=args.face_crop, recursive=args.recursive,
                             batch_size=args.batch_size,
                             min_face_fraction=args.min_face_fraction,
                             show_progress=True)
    except (FileNotFoundError, ValueError) as e:  # bad workdir / checkpoint
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(summary(rows, args.output))
    return 0 if any(r["status"] != "error" for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
