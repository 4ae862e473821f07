"""Validated samples -> a TFDS dataset (array_record), for `data_prep.convert --format tfds`.

The converter decodes, hashes and reports every file first (a corrupt file is skipped there,
never stored); this module then hands the kept files to a TFDS `GeneratorBasedBuilder`, which
writes `<output>/<name>/<version>/` (dataset_info.json, features.json, label names and
`<name>-<split>.array_record-NNNNN-of-NNNNN` shards of serialized tf.train.Example). Load it with

    tfds.data_source(name, split="train", data_dir=output)       # random access, no TensorFlow
    tfds.builder_from_directory(f"{output}/{name}/{version}")
    python -m deepfake_jax.main ... --config.data.tfds.name=NAME --config.data.tfds.data_dir=OUTPUT

Features: image (the ORIGINAL file bytes, `tfds.features.Image`), label (ClassLabel real/fake,
fake = 1 as in our records), path, sha256, video (empty unless a video-frame layout) and meta
(JSON text). Example order = the converter's record order (`disable_shuffling`), so records.csv's
index_in_split is the `tfds.data_source` index.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import shutil
import types
from collections.abc import Sequence
from typing import Any

from deepfake_jax.data import records

VERSION = "1.0.0"
_NAME_RE = re.compile(r"^[a-z][a-z0-9_]*$")


@dataclasses.dataclass(frozen=True)
class Entry:
    path_abs: str
    rel_path: str
    label: int
    sha256: str
    meta: dict[str, Any]


def check_name(name: str) -> str:
    if not _NAME_RE.match(name or ""):
        raise ValueError(f"--tfds_name {name!r}: TFDS names are snake_case (a-z, 0-9, _), "
                         "starting with a letter")
    return name


def builder_dir(output_dir: str, name: str) -> str:
    return os.path.join(output_dir, name)


def _builder_class(name: str, entries: dict[str, Sequence[Entry]]):
    import tensorflow_datasets as tfds

    def generate(split_entries: Sequence[Entry]):
        for i, e in enumerate(split_entries):
            with open(e.path_abs, "rb") as f:
                data = f.read()
            if hashlib.sha256(data).hexdigest() != e.sha256:  # changed since it was validated
                raise ValueError(f"{e.rel_path} changed during the conversion; run it again")
            yield i, {"image": data, "label": e.label, "path": e.rel_path, "sha256": e.sha256,
                      "video": e.meta.get("video", ""),
                      "meta": json.dumps(e.meta, sort_keys=True, separators=(",", ":"))}

    def body(ns: dict[str, Any]) -> None:
        ns["name"] = name
        ns["VERSION"] = tfds.core.Version(VERSION)
        ns["_info"] = lambda self: tfds.core.DatasetInfo(
            builder=self, disable_shuffling=True,
            description="Real/fake faces written by data_prep.convert (original file bytes).",
            features=tfds.features.FeaturesDict({
                "image": tfds.features.Image(),
                "label": tfds.features.ClassLabel(names=list(records.CLASS_NAMES)),
                "path": tfds.features.Text(), "sha256": tfds.features.Text(),
                "video": tfds.features.Text(), "meta": tfds.features.Text()}),
            supervised_keys=("image", "label"))
        ns["_split_generators"] = lambda self, dl_manager: {
            split: generate(split_entries) for split, split_entries in entries.items()}
        ns["_generate_examples"] = lambda self, split_entries: generate(split_entries)

    # skip_registration: every conversion builds its own class, under any name
    return types.new_class("ConvertedFaces", (tfds.core.GeneratorBasedBuilder,),
                           {"skip_registration": True}, body)


def write_tfds(output_dir: str, name: str, entries: dict[str, Sequence[Entry]]
               ) -> dict[str, list[str]]:
    """Builds the dataset; returns {split: its shard files relative to `output_dir`}."""
    try:
        import tensorflow_datasets as tfds  # noqa: F401
    except ImportError:
        raise ImportError("--format tfds needs tensorflow-datasets: pip install -e '.[tfds]'"
                          ) from None
    builder = _builder_class(check_name(name), entries)(data_dir=output_dir,
                                                         file_format="array_record")
    builder.download_and_prepare()
    downloads = os.path.join(output_dir, "downloads")
    if os.path.isdir(downloads) and all(not files for _, _, files in os.walk(downloads)):
        shutil.rmtree(downloads)  # TFDS's empty download cache: nothing was downloaded
    version_dir = os.path.join(builder_dir(output_dir, name), VERSION)
    shards: dict[str, list[str]] = {}
    for split in entries:
        prefix = f"{name}-{split}.array_record-"
        shards[split] = sorted(os.path.relpath(os.path.join(version_dir, f), output_dir)
                               for f in os.listdir(version_dir) if f.startswith(prefix))
    return shards


def remove_previous(output_dir: str, name: str) -> None:
    """Removes a dataset this module wrote (`--overwrite`): only a folder holding TFDS
    versions (`*/dataset_info.json`) or TFDS's unfinished `incomplete.*` folders."""
    path = builder_dir(output_dir, name)
    if not os.path.isdir(path):
        return
    owned = all(os.path.exists(os.path.join(path, d, "dataset_info.json"))
                or d.startswith("incomplete.") for d in os.listdir(path))
    if not owned:
        raise ValueError(f"{path} exists and is not a TFDS dataset folder: choose another "
                         "--output or --tfds_name")
    shutil.rmtree(path)
