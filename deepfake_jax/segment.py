"""Face parsing of image files with a trained run (`config.task = "segmentation"`).

    python -m deepfake_jax.segment --workdir runs/parsing IMAGE_OR_DIR... --output OUTDIR
        [--checkpoint latest|best|STEP] [--face-crop] [--recursive] [--batch-size 16]
        [--min-face-fraction 0.02]

Per readable image with a face, in OUTDIR: `<stem>_mask.png` (colour-coded classes,
`segmentation.PALETTE`), `<stem>_labels.png` (class indices, 8-bit), `<stem>_overlay.png`,
crops `<stem>_<region>.png` for left_eye, right_eye, nose and lips (where present), and
`<stem>.json`: status, image size, face box, per-region box [x0, y0, x1, y1] (exclusive end)
and area in pixels, per-class areas. Every input file gets a JSON with its status:

    ok        parsed; the files above were written
    no_face   no face: with --face-crop, OpenCV's detector found none; otherwise the parser
              labelled less than --min-face-fraction of the image as face classes
    error     the file could not be read or decoded (the reason is in the JSON and summary)

`summary.json` lists every file; a one-screen summary is printed at the end. Exit status 1 only
if no input was readable.

Python API (the heatmap explainer and the web app use it)::

    parser = FaceParser(workdir, checkpoint="latest")   # restores and compiles once
    labels = parser.parse(images_uint8_nhwc)             # int32 (N, H, W) at the input size
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from collections import Counter
from typing import Any

import cv2
import jax
import numpy as np
import tqdm

from deepfake_jax import console, evaluate, faces, seg_train, segmentation, sharding
from deepfake_jax.image_io import ImageDecodeError, decode_image_rgb, list_images, read_image_file

FACE_MARGIN = 0.3
# Classes that make a face (not background, clothes, neck or hair): used to decide no_face.
FACE_CLASSES = ("skin", "l_brow", "r_brow", "l_eye", "r_eye", "nose", "mouth", "u_lip", "l_lip")


class FaceParser:
    """A trained face-parsing run, restored once; `parse` runs its jitted eval step.

    Images of any size are resized to the run's `input.image_size` (area filter down, linear
    up) and the label maps resized back (nearest), so labels match the input pixels.
    """

    def __init__(self, workdir: str, checkpoint: str = "latest", use_ema: bool | None = None,
                 batch_size: int = 16, devices: list | None = None):
        self.workdir = os.path.abspath(workdir)
        config = evaluate.load_run_config(self.workdir, checkpoint)
        if config.get("task", "classification") != "segmentation":
            raise ValueError(f"{self.workdir} is not a face-parsing run (config.task = "
                             f"{config.get('task', 'classification')!r})")
        self.config = config
        self.image_size = int(config.input.image_size)
        self.num_classes = int(config.num_classes)
        self.mesh = sharding.make_mesh(None, devices=jax.local_devices() if devices is None
                                       else devices)
        n = self.mesh.shape[sharding.DATA_AXIS]
        self.batch_size = max(1, math.ceil(max(1, int(batch_size)) / n)) * n
        graphdef, self.state, self.step = evaluate.restore_state(config, self.workdir,
                                                                 checkpoint, self.mesh)
        use_ema = bool(config.eval.use_ema) if use_ema is None else bool(use_ema)
        evals = seg_train.make_eval_steps(config, self.mesh, graphdef,
                                          jax.tree.map(lambda x: x.sharding, self.state))
        self._eval = evals[use_ema]

    def _model_view(self, image: np.ndarray) -> np.ndarray:
        s = self.image_size
        if image.shape[:2] == (s, s):
            return image
        interp = cv2.INTER_AREA if min(image.shape[:2]) > s else cv2.INTER_LINEAR
        return cv2.resize(image, (s, s), interpolation=interp)

    def parse(self, images: np.ndarray | list[np.ndarray]) -> np.ndarray:
        """uint8 RGB (N, H, W, 3) (or a list of same-sized images) -> int32 (N, H, W) labels."""
        images = np.asarray(images)
        if images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"expected uint8 RGB images (N, H, W, 3), got shape {images.shape}")
        if images.dtype != np.uint8:
            raise ValueError(f"expected uint8 images, got {images.dtype}")
        out = np.zeros(images.shape[:3], np.int32)
        h, w = images.shape[1:3]
        for start in range(0, len(images), self.batch_size):
            chunk = images[start:start + self.batch_size]
            batch = np.zeros((self.batch_size, self.image_size, self.image_size, 3), np.uint8)
            batch[:len(chunk)] = [self._model_view(im) for im in chunk]
            arr = sharding.host_to_global(self.mesh, {"image": batch})
            labels = np.asarray(self._eval(self.state, arr))[:len(chunk)]  # padding dropped
            for k, lab in enumerate(labels):
                if (h, w) != lab.shape:
                    lab = segmentation.resize_labels(lab, (w, h))
                out[start + k] = lab
        return out


# ----------------------------------------------------------------------------- files


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
    ids = [segmentation.CLASS_INDEX[c] for c in FACE_CLASSES]
    return float(np.isin(label_map, ids).mean())


def write_outputs(out_dir: str, stem: str, image: np.ndarray, label_map: np.ndarray,
                  row: dict[str, Any]) -> dict[str, Any]:
    """Mask, labels, overlay and region crops of one parsed image; fills `row`."""
    files = {
        "mask": _write_png(os.path.join(out_dir, f"{stem}_mask.png"),
                           segmentation.colorize(label_map)),
        "labels": _write_png(os.path.join(out_dir, f"{stem}_labels.png"),
                             label_map.astype(np.uint8)),
        "overlay": _write_png(os.path.join(out_dir, f"{stem}_overlay.png"),
                              segmentation.overlay_labels(image, label_map)),
    }
    regions = segmentation.region_boxes(label_map)
    for name, region in regions.items():
        if region["box"] is not None:
            crop = segmentation.crop_box(image, region["box"])
            region["crop"] = files[name] = _write_png(
                os.path.join(out_dir, f"{stem}_{name}.png"), crop)
    counts = np.bincount(label_map.reshape(-1), minlength=len(segmentation.PARSING_CLASSES))
    row.update(regions=regions, files=files, class_areas={
        n: int(c) for n, c in zip(segmentation.PARSING_CLASSES, counts, strict=False) if c})
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
        segmentation.write_json(row, os.path.join(out_dir, f"{row['stem']}.json"))
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
                               f"image (< --min-face-fraction {min_face_fraction:.0%})")
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
    segmentation.write_json({"workdir": os.path.abspath(workdir), "files": rows},
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
                                                   for k in segmentation.REGIONS))
    bad = [r for r in rows if r["status"] != "ok"]
    for r in bad[:max_errors]:
        lines.append(f"  {r['status']:8s} {r['path']}: {r['error']}")
    if len(bad) > max_errors:
        lines.append(f"  ... and {len(bad) - max_errors} more (see summary.json)")
    lines.append(f"outputs: {os.path.abspath(out_dir)} (summary.json, <stem>.json, masks, "
                 "overlays, crops)")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m deepfake_jax.segment", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("inputs", nargs="+", metavar="IMAGE_OR_DIR")
    p.add_argument("--workdir", required=True, help="a face-parsing training run")
    p.add_argument("--output", required=True, help="folder for masks, overlays, crops, JSON")
    p.add_argument("--checkpoint", default="latest", help="latest, best or a step number")
    p.add_argument("--face-crop", action="store_true",
                   help="parse the largest detected face (OpenCV) instead of the whole image")
    p.add_argument("--recursive", action="store_true")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--min-face-fraction", type=float, default=0.02,
                   help="below this share of face-class pixels an image has no face")
    console.add_argument(p)
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
