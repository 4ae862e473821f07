"""A converted dataset -> K seeded, stratified cross-validation folds, each a converted dataset.

    python -m data_prep.folds --input /data/faces_ar --output /data/faces_5fold --k 5 [--seed 0]

The records of the pooled splits (default: train + valid; the test split stays untouched
for a final check) are assigned to K folds by scikit-learn's `StratifiedKFold(shuffle=True,
random_state=seed)` on the real/fake label; records carrying a video group (layout `videos`)
by `StratifiedGroupKFold`, so a group's frames stay in one fold and on one side of the
valid/train cut. `fold_<i>/` is an ordinary converted dataset:

    test    fold i (held out: the fold's reported numbers)
    valid   a stratified `val_fraction` of the other folds (early checks, the threshold)
    train   the rest of the other folds

Records are copied byte for byte (the images are never re-encoded), so K folds take about
K x (1 + 1/K) the disk of the pooled splits. `folds.csv` records which source record went
to which fold and role: the split is on disk, not re-derived.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
from sklearn.model_selection import (
    GroupShuffleSplit,
    StratifiedGroupKFold,
    StratifiedKFold,
    train_test_split,
)

from data_prep.convert import ARRAY_RECORD_OPTIONS, _ShardWriter
from deepfake_jax import cli, json_io
from deepfake_jax.data import records

FOLDS_INDEX = "folds.csv"
PER_SHARD = 4096


def _read_split(dataset_dir: str, split: str) -> list[bytes]:
    import grain

    source = grain.sources.ArrayRecordDataSource(records.split_files(dataset_dir, split))
    return [source[i] for i in range(len(source))]


def assign_folds(labels: np.ndarray, k: int, seed: int, val_fraction: float,
                 groups: Sequence[str] | None = None) -> list[dict[str, np.ndarray]]:
    """Per fold, the pooled-record indices of its train / valid / test parts.

    `groups` (one id a record, e.g. the video group of a frame): every record of a group goes
    to the same fold, and to the same side of the valid / train cut
    (`StratifiedGroupKFold` + `GroupShuffleSplit`)."""
    if k < 2:
        raise ValueError(f"k={k}: cross-validation needs at least 2 folds")
    counts = np.bincount(labels, minlength=2)
    if counts.min() < k:
        raise ValueError(f"k={k} folds need at least {k} records of each class; have "
                         f"{counts[0]} real and {counts[1]} fake")
    if groups is not None:
        return _assign_group_folds(labels, np.asarray(groups), k, seed, val_fraction)
    splitter = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
    folds = []
    for i, (rest, test) in enumerate(splitter.split(np.zeros(len(labels)), labels)):
        train, valid = train_test_split(rest, test_size=val_fraction, stratify=labels[rest],
                                        random_state=seed + i)
        folds.append({"train": np.sort(train), "valid": np.sort(valid), "test": np.sort(test)})
    return folds


def _assign_group_folds(labels: np.ndarray, groups: np.ndarray, k: int, seed: int,
                        val_fraction: float) -> list[dict[str, np.ndarray]]:
    if len(set(groups.tolist())) < k:
        raise ValueError(f"k={k} folds need at least {k} groups (videos); have "
                         f"{len(set(groups.tolist()))}")
    splitter = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
    folds = []
    for i, (rest, test) in enumerate(splitter.split(np.zeros(len(labels)), labels, groups)):
        cut = GroupShuffleSplit(n_splits=1, test_size=val_fraction, random_state=seed + i)
        train, valid = next(cut.split(rest, groups=groups[rest]))
        folds.append({"train": np.sort(rest[train]), "valid": np.sort(rest[valid]),
                      "test": np.sort(test)})
    return folds


def make_folds(input_dir: str, output_dir: str, k: int = 5, seed: int = 0,
               pool_splits: Sequence[str] = ("train", "valid"), val_fraction: float = 0.1
               ) -> list[str]:
    """Writes `output_dir/fold_<i>/` for i < k; returns their paths. Reuses complete folds."""
    source_manifest = records.read_manifest(input_dir)
    dirs = [os.path.join(output_dir, f"fold_{i}") for i in range(k)]
    settings = {"input": os.path.abspath(input_dir), "k": k, "seed": seed,
                "pool_splits": list(pool_splits), "val_fraction": val_fraction}
    settings_path = os.path.join(output_dir, "folds.json")
    if os.path.exists(settings_path):
        with open(settings_path) as f:
            previous = json.load(f)
        if previous != settings:
            raise ValueError(f"{output_dir} holds folds made with {previous}, not {settings}: "
                             "use another output folder or delete it")
        if all(os.path.exists(os.path.join(d, records.MANIFEST_NAME)) for d in dirs):
            return dirs

    raw, source = [], []
    for split in pool_splits:
        split_records = _read_split(input_dir, split)
        raw.extend(split_records)
        source.extend((split, i) for i in range(len(split_records)))
    decoded = [records.decode_record(r) for r in raw]
    labels = np.array([d["label"] for d in decoded], np.int64)
    # video-frame datasets: a video group never straddles two folds (frames of one source leak)
    grouped = any("group" in d.get("meta", {}) for d in decoded)
    groups = [d.get("meta", {}).get("group", d["path"]) for d in decoded] if grouped else None
    folds = assign_folds(labels, k, seed, val_fraction, groups)

    os.makedirs(output_dir, exist_ok=True)
    json_io.write_json(settings, settings_path)
    rows = []
    for i, (fold_dir, parts) in enumerate(zip(dirs, folds, strict=True)):
        os.makedirs(fold_dir, exist_ok=True)
        splits_info: dict[str, Any] = {}
        for role in ("train", "valid", "test"):
            writer = _ShardWriter(fold_dir, role, PER_SHARD)
            for j in parts[role]:
                writer.write(raw[j])
                if role == "test":
                    rows.append((source[j][0], source[j][1], decoded[j]["path"],
                                 int(labels[j]), i))
            names = writer.finish()
            role_labels = labels[parts[role]]
            splits_info[role] = {
                "files": names, "num_records": int(len(parts[role])),
                "counts": {name: int((role_labels == c).sum())
                           for c, name in enumerate(records.CLASS_NAMES)},
            }
        manifest = {
            "format_version": records.FORMAT_VERSION,
            "layout": source_manifest.get("layout"),
            "input": os.path.abspath(input_dir),
            "split_source": f"fold {i} of {k}: "
                            f"{'StratifiedGroupKFold' if grouped else 'StratifiedKFold'}"
                            f"(shuffle=True, random_state={seed}) over {'+'.join(pool_splits)}",
            "split_seed": seed,
            "classes": list(records.CLASS_NAMES),
            "splits": splits_info,
            "array_record_options": ARRAY_RECORD_OPTIONS,
        }
        json_io.write_json(manifest, os.path.join(fold_dir, records.MANIFEST_NAME))
    with open(os.path.join(output_dir, FOLDS_INDEX), "w", newline="") as f:
        out = csv.writer(f)
        out.writerow(["source_split", "source_index", "path", "label", "test_fold"])
        out.writerows(sorted(rows))
    return dirs


def main(argv: Sequence[str] | None = None) -> int:
    parser = cli.ArgumentParser("python -m data_prep.folds", __doc__.split("\n\n")[0])
    parser.add_argument("--input", required=True, help="a folder written by data_prep.convert")
    parser.add_argument("--output", required=True)
    parser.add_argument("--k", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--pool", default="train,valid", help="splits to pool, comma-separated")
    parser.add_argument("--val_fraction", type=float, default=0.1)
    args = parser.parse_args(argv)
    dirs = make_folds(args.input, args.output, args.k, args.seed, args.pool.split(","),
                      args.val_fraction)
    for d in dirs:
        splits = records.read_manifest(d)["splits"]
        print(d, {s: v["num_records"] for s, v in splits.items()})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
