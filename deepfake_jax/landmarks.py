"""Facial landmarks of image files: drawn images, region crops and a JSON per image, a CSV of rows.

    python -m deepfake_jax.landmarks IMAGE_OR_DIR... --output OUTDIR [--backend dlib|mediapipe]
        [--model PATH] [--recursive] [--align_size 256] [--upsample 1] [--margin 0.25]

The detector and its backends: `deepfake_jax.parsing.landmarks`.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import time
from collections import Counter
from collections.abc import Sequence
from typing import Any

import cv2
import numpy as np

from deepfake_jax import cli, console
from deepfake_jax.data.image_io import decode_image_rgb, list_images, read_image_file
from deepfake_jax.parsing.landmarks import (
    BACKENDS,
    CSV_COLUMNS,
    REGION_MARGIN,
    REGIONS,
    LandmarkBackend,
    LandmarkBackendError,
    align_face,
    crop_regions,
    draw_landmarks,
    get_backend,
)


def _output_key(path: str, used: set[str]) -> str:
    """A unique file-name stem for `path`'s outputs: its stem, else parent_stem, else + a
    counter (inputs from different folders often share names)."""
    stem = os.path.splitext(os.path.basename(path))[0] or "image"
    parent = os.path.basename(os.path.dirname(os.path.abspath(path)))
    for key in (stem, f"{parent}_{stem}"):
        if key not in used:
            used.add(key)
            return key
    i = 2
    while f"{parent}_{stem}_{i}" in used:
        i += 1
    used.add(f"{parent}_{stem}_{i}")
    return f"{parent}_{stem}_{i}"


def _write_rgb(path: str, rgb: np.ndarray) -> None:
    if not cv2.imwrite(path, cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)):
        raise OSError(f"cannot write {path}")


def process_file(path: str, backend: LandmarkBackend, outdir: str, key: str, *,
                 margin: float = REGION_MARGIN, align_size: int = 0) -> dict[str, Any]:
    """Landmarks of one file; writes `<key>_landmarks.png`, `<key>_face<i>_<region>.png`
    (`_aligned.png` with align_size), `<key>.json`. Returns its CSV row; a file that cannot be
    read or decoded gets status "error", one without a face "no_face"."""
    row: dict[str, Any] = {c: "" for c in CSV_COLUMNS}
    row.update(path=path, faces=0)
    try:
        image = decode_image_rgb(read_image_file(path), path)  # bounded, see image_io
    except OSError as e:
        row.update(status="error", error=f"cannot read file: {e.strerror or e}")
        return row
    except Exception as e:  # noqa: BLE001 - one bad file must not stop the others
        row.update(status="error", error=getattr(e, "reason", None) or f"{type(e).__name__}: {e}")
        return row
    faces = backend.detect(image)
    row.update(status="ok" if faces else "no_face", faces=len(faces),
               error="" if faces else "no face found")
    if faces:
        row["face_box"] = ",".join(map(str, faces[0].box))
        for name in REGIONS:
            if name in faces[0].regions:
                row[f"{name}_box"] = ",".join(map(str, faces[0].region_box(name, image.shape,
                                                                           margin)))
        _write_rgb(os.path.join(outdir, f"{key}_landmarks.png"),
                   draw_landmarks(image, faces, margin=margin))
        for i, face in enumerate(faces):
            for name, crop in crop_regions(image, face, margin).items():
                if crop.size:
                    _write_rgb(os.path.join(outdir, f"{key}_face{i}_{name}.png"), crop)
            if align_size:
                _write_rgb(os.path.join(outdir, f"{key}_face{i}_aligned.png"),
                           align_face(image, face, align_size))
    record = {"path": path, "status": row["status"], "backend": backend.name,
              "width": image.shape[1], "height": image.shape[0],
              "faces": [f.to_json(image.shape, margin) for f in faces]}
    row["json"] = os.path.join(outdir, f"{key}.json")
    with open(row["json"], "w") as f:
        json.dump(record, f)
    return row


def run(paths: Sequence[str], outdir: str, backend: LandmarkBackend, *, recursive: bool = False,
        margin: float = REGION_MARGIN, align_size: int = 0, show_progress: bool = True
        ) -> list[dict[str, Any]]:
    """process_file on every image of `paths` (files, folders); writes OUTDIR/landmarks.csv."""
    import tqdm

    files = list_images(paths, recursive)
    os.makedirs(outdir, exist_ok=True)
    used: set[str] = set()
    rows = []
    for path in tqdm.tqdm(files, desc="landmarks", unit="img", disable=not show_progress):
        rows.append(process_file(path, backend, outdir, _output_key(path, used), margin=margin,
                                 align_size=align_size))
    with open(os.path.join(outdir, "landmarks.csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, CSV_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    return rows


def summary(rows: list[dict[str, Any]], outdir: str, seconds: float, max_errors: int = 5) -> str:
    status = Counter(r["status"] for r in rows)
    readable = status["ok"] + status["no_face"]
    rate = f"{status['ok'] / readable:.1%}" if readable else "n/a"
    lines = [f"{len(rows)} file(s): ok {status['ok']}, no_face {status['no_face']}, "
             f"error {status['error']}; faces found in {rate} of the readable images; "
             f"{seconds:.1f} s ({len(rows) / max(seconds, 1e-9):.1f} img/s)"]
    errors = [r for r in rows if r["status"] == "error"]
    lines += [f"  error: {r['path']}: {r['error']}" for r in errors[:max_errors]]
    if len(errors) > max_errors:
        lines.append(f"  ... and {len(errors) - max_errors} more errors (see landmarks.csv)")
    lines.append(f"outputs in {outdir} (rows in {os.path.join(outdir, 'landmarks.csv')})")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = cli.ArgumentParser(
        prog="python -m deepfake_jax.landmarks",
        description="Facial landmarks and left eye / right eye / nose / lips regions of image "
                    "files: drawn images, region crops and a JSON per image.")
    p.add_argument("inputs", nargs="+", metavar="IMAGE_OR_DIR")
    p.add_argument("--output", required=True, help="output folder")
    p.add_argument("--backend", choices=BACKENDS, default="dlib")
    p.add_argument("--model", default=None, help="model file: face_landmarker.task for "
                   "mediapipe (required); another 68-point .dat for dlib (optional)")
    p.add_bool("recursive", False, "walk subfolders too")
    p.add_argument("--margin", type=float, default=REGION_MARGIN,
                   help="region box margin, a fraction of the region's larger side")
    p.add_argument("--align_size", type=int, default=0,
                   help="also write each face aligned to this size (0: off)")
    p.add_argument("--upsample", type=int, default=1,
                   help="dlib: times to double the image before detecting")
    return p


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    args = build_parser().parse_args(argv)
    console.setup(args.verbose)
    kwargs = {"upsample": args.upsample} if args.backend == "dlib" else {}
    try:
        backend = get_backend(args.backend, args.model, **kwargs)
    except LandmarkBackendError as e:
        sys.exit(f"error: {e}")
    start = time.time()
    rows = run(args.inputs, args.output, backend, recursive=args.recursive, margin=args.margin,
               align_size=args.align_size)
    print(summary(rows, args.output, time.time() - start))
    if rows and not any(r["status"] != "error" for r in rows):
        sys.exit("error: no readable image among the inputs")
    return rows


if __name__ == "__main__":
    main()
