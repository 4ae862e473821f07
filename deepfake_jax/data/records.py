"""The on-disk format shared by `data_prep` (writer) and `input_pipeline` (reader).

A converted dataset is a folder:

    manifest.json                          what is where (see `Manifest` fields below)
    <split>-<i:05d>-of-<n:05d>.array_record   one record per image, msgpack-encoded dict
    report.json / report.md / *.png        the data report written by data_prep

Each record is a msgpack map with:

    image   bytes   the ORIGINAL encoded file bytes, never re-encoded (re-compression would
                    change the generator traces a detector looks for)
    label   int     0 = real, 1 = fake (so a model's sigmoid output is p_fake)
    path    str     source path relative to the input root
    sha256  str     hex digest of `image`
    meta    map     layout-specific extras, e.g. CIPLab {"difficulty": "easy", "edited": [0,1,0,1]}

msgpack was chosen over tf.train.Example so that reading needs neither TensorFlow nor protobuf.
"""

from __future__ import annotations

import json
import os
from typing import Any

import msgpack

FORMAT_VERSION = 1
CLASS_NAMES = ("real", "fake")
LABEL_REAL, LABEL_FAKE = 0, 1
MANIFEST_NAME = "manifest.json"


def encode_record(
    image: bytes, label: int, path: str, sha256: str, meta: dict[str, Any] | None = None
) -> bytes:
    if label not in (LABEL_REAL, LABEL_FAKE):
        raise ValueError(f"label must be 0 (real) or 1 (fake), got {label!r} for {path}")
    return msgpack.packb(
        {"image": bytes(image), "label": int(label), "path": path, "sha256": sha256,
         "meta": meta or {}},
        use_bin_type=True,
    )


def decode_record(raw: bytes) -> dict[str, Any]:
    return msgpack.unpackb(raw, raw=False)


def shard_filename(split: str, index: int, num_shards: int) -> str:
    return f"{split}-{index:05d}-of-{num_shards:05d}.array_record"


def read_manifest(dataset_dir: str) -> dict[str, Any]:
    """Reads `manifest.json`; raises a clear error when the folder is not a converted dataset."""
    path = os.path.join(dataset_dir, MANIFEST_NAME)
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"{dataset_dir!r} is not a converted dataset: {MANIFEST_NAME} is missing. "
            "Convert image folders first: python -m data_prep.convert --input DIR --output DIR"
        )
    with open(path) as f:
        manifest = json.load(f)
    if manifest.get("format") == "tfds":
        name = manifest.get("tfds", {}).get("name", "NAME")
        raise ValueError(
            f"{dataset_dir} holds a TFDS dataset (data_prep.convert --format tfds), not our "
            f"records: read it with --config.data.tfds.name={name} "
            f"--config.data.tfds.data_dir={dataset_dir}")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise ValueError(
            f"{path}: format_version {manifest.get('format_version')!r} is not supported "
            f"(this code reads version {FORMAT_VERSION}); re-run data_prep.convert."
        )
    return manifest


class MissingSplitError(KeyError, ValueError):
    """A split the dataset does not have (a KeyError as before; a ValueError so that the
    command-line tools print it as a one-line error)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


def split_files(dataset_dir: str, split: str) -> list[str]:
    """Absolute paths of the ArrayRecord shards of one split, as listed in the manifest."""
    manifest = read_manifest(dataset_dir)
    splits = manifest.get("splits", {})
    if split not in splits:
        raise MissingSplitError(
            f"split {split!r} not in {dataset_dir}/{MANIFEST_NAME}; available: {sorted(splits)}"
        )
    files = [os.path.join(dataset_dir, name) for name in splits[split]["files"]]
    missing = [f for f in files if not os.path.isfile(f)]
    if missing:
        raise FileNotFoundError(f"shards listed in the manifest are missing: {missing}")
    return files
