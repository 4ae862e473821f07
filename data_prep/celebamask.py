"""Face-parsing datasets (image + label map) -> ArrayRecord + manifest.json + split.csv.

    python -m data_prep.celebamask --input DIR --output DIR [--layout auto|celebamask|
        images_masks|synthetic] [--split_ratios 0.8,0.1,0.1] [--split_seed 0]
        [--records_per_shard 2000] [--limit N] [--overwrite]

Layouts (auto-detected):

- ``celebamask``: a CelebAMask-HQ download, ``CelebA-HQ-img/<i>.jpg`` and per-part binary masks
  ``CelebAMask-HQ-mask-anno/<k>/<i:05d>_<part>.png`` with ``k = i // 2000``. The parts are
  painted into one label map in `PARSING_CLASSES` order (skin first ... hat last), a later part
  overwriting an earlier one where they overlap (the rule of face-parsing.PyTorch's
  ``prepropess_data.py``); a mask pixel is "on" when its value is > 127. A missing part file
  means the part is absent; an image without any part file is skipped (listed in the manifest).
- ``images_masks``: ``images/<name>.<ext>`` with ``masks/<name>.png`` label maps (class indices,
  8-bit), or the same under ``train/ valid/ test/`` (then those splits are used as they are).
- ``synthetic``: ``data_prep.synthetic --masks`` output, ``<split>/<class>/<stem>.jpg`` with
  ``<split>/<class>_masks/<stem>.png`` (its splits are used as they are).

Without given splits a seeded split is made: the name-sorted samples permuted by
``numpy.random.default_rng(split_seed)``, cut by ``--split_ratios``. Every record's split is
written to ``split.csv`` (path, split), and seed and ratios to the manifest. Records
(`deepfake_jax.data.parsing_pipeline`): the original image bytes + the label map as PNG.
Unreadable or
corrupt images and masks are skipped and listed in ``manifest["skipped_files"]``.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import hashlib
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np

from data_prep import layouts
from data_prep.convert import _ShardWriter, prepare_output, split_order
from deepfake_jax import cli, json_io
from deepfake_jax.data import parsing_pipeline, records
from deepfake_jax.data.image_io import IMAGE_EXTENSIONS, ImageDecodeError, decode_image_rgb
from deepfake_jax.parsing.classes import NUM_CLASSES, PARSING_CLASSES

LAYOUTS = ("celebamask", "images_masks", "synthetic")
SPLITS = ("train", "valid", "test")
CELEBA_IMAGES = "CelebA-HQ-img"
CELEBA_MASKS = "CelebAMask-HQ-mask-anno"
SPLIT_FILE = "split.csv"


@dataclass
class Sample:
    image: str  # absolute path
    rel_path: str
    mask: str | dict[int, str]  # a label-map PNG, or {class index: binary part mask PNG}
    split: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)


# ----------------------------------------------------------------------------- label maps


def celebamask_part_files(mask_root: str, index: int) -> dict[int, str]:
    """{class index: path} of the part masks of CelebA-HQ image `index` that exist."""
    folder = os.path.join(mask_root, str(index // 2000))
    found = {}
    for cls, part in enumerate(PARSING_CLASSES[1:], start=1):
        path = os.path.join(folder, f"{index:05d}_{part}.png")
        if os.path.isfile(path):
            found[cls] = path
    return found


def paint_parts(parts: dict[int, str], source: str = "") -> np.ndarray:
    """Binary part masks -> one uint8 label map; later classes overwrite earlier ones."""
    label_map = None
    for cls in sorted(parts):
        m = cv2.imread(parts[cls], cv2.IMREAD_GRAYSCALE)
        if m is None:
            raise ValueError(f"cannot read part mask {parts[cls]}")
        if label_map is None:
            label_map = np.zeros(m.shape, np.uint8)
        if m.shape != label_map.shape:
            raise ValueError(f"{source}: part mask {parts[cls]} is {m.shape}, others "
                             f"{label_map.shape}")
        label_map[m > 127] = cls
    if label_map is None:
        raise ValueError(f"{source}: no part masks")
    return label_map


def read_label_map(path: str) -> np.ndarray:
    with open(path, "rb") as f:
        lab = parsing_pipeline.decode_label_png(f.read(), path)
    if lab.max(initial=0) >= NUM_CLASSES:
        raise ValueError(f"label map {path} has values up to {lab.max()}, above the "
                         f"{NUM_CLASSES - 1} of the {NUM_CLASSES}-class order")
    return lab


# ----------------------------------------------------------------------------- layouts


def detect_layout(root: str) -> str:
    if os.path.isdir(os.path.join(root, CELEBA_IMAGES)) and os.path.isdir(
            os.path.join(root, CELEBA_MASKS)):
        return "celebamask"
    if any(os.path.isdir(os.path.join(root, d, "images")) for d in ("", *SPLITS)):
        return "images_masks"
    if any(os.path.isdir(os.path.join(root, s, c + "_masks")) for s in SPLITS
           for c in ("real", "fake")):
        return "synthetic"
    raise layouts.LayoutError(
        f"{root}: not a face-parsing dataset. Expected {CELEBA_IMAGES}/ + {CELEBA_MASKS}/ "
        "(CelebAMask-HQ), images/ + masks/ (optionally under train/ valid/ test/), or "
        f"data_prep.synthetic --masks output. Found:\n{layouts.describe_tree(root)}")


def _images_in(folder: str) -> list[str]:
    return sorted(n for n in os.listdir(folder) if n.lower().endswith(IMAGE_EXTENSIONS))


def list_samples(root: str, layout: str) -> tuple[list[Sample], list[dict[str, str]]]:
    """(samples, skipped) of a layout; skipped files carry the reason."""
    samples, skipped = [], []
    if layout == "celebamask":
        img_dir, mask_root = os.path.join(root, CELEBA_IMAGES), os.path.join(root, CELEBA_MASKS)
        for name in _images_in(img_dir):
            stem = os.path.splitext(name)[0]
            rel = os.path.join(CELEBA_IMAGES, name)
            if not stem.isdigit():
                skipped.append({"path": rel, "reason": "name is not a CelebA-HQ index"})
                continue
            parts = celebamask_part_files(mask_root, int(stem))
            if not parts:
                skipped.append({"path": rel, "reason": f"no part masks in {CELEBA_MASKS}/"
                                                       f"{int(stem) // 2000}/"})
                continue
            samples.append(Sample(os.path.join(img_dir, name), rel, parts,
                                  meta={"celeba_hq_index": int(stem)}))
    elif layout in ("images_masks", "synthetic"):
        if layout == "images_masks":
            groups = [(s, os.path.join(root, s, "images"), os.path.join(root, s, "masks"))
                      for s in SPLITS if os.path.isdir(os.path.join(root, s, "images"))]
            if not groups:
                groups = [(None, os.path.join(root, "images"), os.path.join(root, "masks"))]
        else:
            groups = [(s, os.path.join(root, s, c), os.path.join(root, s, c + "_masks"))
                      for s in SPLITS for c in ("real", "fake")
                      if os.path.isdir(os.path.join(root, s, c + "_masks"))]
        for split, img_dir, mask_dir in groups:
            for name in _images_in(img_dir):
                rel = os.path.relpath(os.path.join(img_dir, name), root)
                mask = os.path.join(mask_dir, os.path.splitext(name)[0] + ".png")
                if not os.path.isfile(mask):
                    skipped.append({"path": rel, "reason": "no label map "
                                    f"{os.path.relpath(mask, root)}"})
                    continue
                samples.append(Sample(os.path.join(img_dir, name), rel, mask, split))
    else:
        raise ValueError(f"layout {layout!r}: choose one of {', '.join(LAYOUTS)}")
    return samples, skipped


def assign_splits(samples: list[Sample], ratios: Sequence[float], seed: int) -> None:
    """Seeded split of samples without one: a permutation of the name-sorted list, cut by
    ratios (train, valid, test)."""
    todo = sorted((s for s in samples if s.split is None), key=lambda s: s.rel_path)
    if not todo:
        return
    ratios = layouts.parse_split_ratios(ratios)
    n = len(todo)
    n_valid, n_test = round(n * ratios[1]), round(n * ratios[2])
    order = np.random.default_rng(seed).permutation(n)
    for rank, j in enumerate(order):
        todo[j].split = ("valid" if rank < n_valid else "test" if rank < n_valid + n_test
                         else "train")


# ----------------------------------------------------------------------------- conversion


def _load(sample: Sample) -> tuple[bytes, bytes, str]:
    """(image bytes, label PNG bytes, sha256); raises ValueError/OSError with the reason."""
    with open(sample.image, "rb") as f:
        data = f.read()
    image = decode_image_rgb(data, sample.rel_path)  # validates the whole file
    if isinstance(sample.mask, dict):
        label_map = paint_parts(sample.mask, sample.rel_path)
    else:
        label_map = read_label_map(sample.mask)
    h, w = image.shape[:2]
    if label_map.shape[0] * w != label_map.shape[1] * h:  # a resize would distort it
        raise ValueError(f"label map {label_map.shape[1]}x{label_map.shape[0]} does not have "
                         f"the aspect ratio of the {w}x{h} image")
    return data, parsing_pipeline.encode_label_png(label_map), hashlib.sha256(data).hexdigest()


def convert(input_dir: str, output_dir: str, layout: str = "auto",
            split_ratios: str | Sequence[float] = (0.8, 0.1, 0.1), split_seed: int = 0,
            records_per_shard: int = 2000, overwrite: bool = False, limit: int | None = None,
            show_progress: bool = True) -> dict[str, Any]:
    """Converts a face-parsing dataset; returns the manifest (also written to output_dir)."""
    input_dir, output_dir = os.path.abspath(input_dir), os.path.abspath(output_dir)
    if not os.path.isdir(input_dir):
        raise FileNotFoundError(f"--input {input_dir} is not a folder")
    layout = detect_layout(input_dir) if layout == "auto" else layout
    samples, skipped = list_samples(input_dir, layout)
    if limit:
        samples = sorted(samples, key=lambda s: s.rel_path)[:int(limit)]
    if not samples:
        raise layouts.LayoutError(f"{input_dir} ({layout}): no image with a label map found")
    given = all(s.split is not None for s in samples)
    assign_splits(samples, split_ratios, split_seed)
    prepare_output(output_dir, overwrite)

    by_split = {s: sorted((x for x in samples if x.split == s), key=lambda x: x.rel_path)
                for s in SPLITS}
    writers: dict[str, _ShardWriter] = {}
    split_rows = []
    progress = None
    if show_progress:
        from tqdm import tqdm

        progress = tqdm(total=len(samples), desc="convert", unit="img", file=sys.stderr)
    try:
        for split, members in by_split.items():
            for i in split_order(members, split, split_seed):
                sample = members[i]
                if progress is not None:
                    progress.update(1)
                try:
                    data, mask_png, sha = _load(sample)
                except (OSError, ValueError, ImageDecodeError) as e:
                    skipped.append({"path": sample.rel_path, "reason": str(e)})
                    continue
                w = writers.get(split) or writers.setdefault(
                    split, _ShardWriter(output_dir, split, records_per_shard))
                w.write(parsing_pipeline.encode_record(data, mask_png, sample.rel_path, sha,
                                                   sample.meta))
                split_rows.append((sample.rel_path, split))
    finally:
        if progress is not None:
            progress.close()
        for w in writers.values():
            w._close_current()
    if not writers:
        raise layouts.LayoutError(f"{input_dir}: none of the {len(samples)} samples could be "
                                  f"read; first reasons: {[s['reason'] for s in skipped[:3]]}")
    shard_names = {split: w.finish() for split, w in writers.items()}
    with open(os.path.join(output_dir, SPLIT_FILE), "w", newline="") as f:
        out = csv.writer(f)
        out.writerow(["path", "split"])
        out.writerows(sorted(split_rows))
    manifest = {
        "format_version": records.FORMAT_VERSION,
        "task": "segmentation",
        "layout": layout,
        "input": input_dir,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(  # noqa: UP017
            timespec="seconds"),
        "classes": list(PARSING_CLASSES),
        "label_rule": ("later classes overwrite earlier ones where part masks overlap; "
                       "part pixel on when value > 127"),
        "split_source": "folders" if given else "seeded",
        "split_seed": split_seed,
        "split_ratios": None if given else list(layouts.parse_split_ratios(split_ratios)),
        "split_file": SPLIT_FILE,
        "splits": {split: {"files": shard_names[split], "num_records": writers[split].count}
                   for split in SPLITS if split in writers},
        "skipped": len(skipped),
        "skipped_files": skipped[:1000],
    }
    json_io.write_json(manifest, os.path.join(output_dir, records.MANIFEST_NAME))
    return manifest


def format_summary(manifest: dict[str, Any], output_dir: str) -> str:
    lines = [f"Converted {manifest['input']} (layout {manifest['layout']}, split "
             f"{manifest['split_source']}) -> {output_dir}"]
    for split, info in manifest["splits"].items():
        lines.append(f"  {split:5s}: {info['num_records']:7d} records in {len(info['files'])} "
                     "shard(s)")
    lines.append(f"  skipped: {manifest['skipped']}")
    for s in manifest["skipped_files"][:5]:
        lines.append(f"    {s['path']}: {s['reason']}")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = cli.ArgumentParser("python -m data_prep.celebamask", __doc__)
    p.add_argument("--input", required=True)
    p.add_argument("--output", required=True)
    p.add_argument("--layout", default="auto", choices=("auto",) + LAYOUTS)
    p.add_argument("--split_ratios", default="0.8,0.1,0.1")
    p.add_argument("--split_seed", type=int, default=0)
    p.add_argument("--records_per_shard", type=int, default=2000)
    p.add_argument("--limit", type=int, default=None, help="convert only the first N samples")
    p.add_bool("overwrite", False, "replace a converted dataset already in --output")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        manifest = convert(args.input, args.output, args.layout, args.split_ratios,
                           args.split_seed, args.records_per_shard, args.overwrite, args.limit)
    except (layouts.LayoutError, FileNotFoundError, FileExistsError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(format_summary(manifest, os.path.abspath(args.output)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
