"""Image folders -> sharded ArrayRecord files + manifest.json + records.csv + data report.

    python -m data_prep.convert --input DIR --output DIR [--layout auto|140k|seed|rvf10k|ciplab|
        generic] [--split_ratios 0.8,0.1,0.1] [--split_seed 0] [--records_per_shard 2000]
        [--workers N] [--overwrite] [--format arrayrecord|tfds] [--tfds_name faces]

Every file is read, hashed and decoded once; unreadable ones are skipped and listed with the
reason. The original bytes are stored (never re-encoded), in a seeded order per split; shards
are renamed when complete and manifest.json is written last, so an interrupted conversion
leaves no manifest. The output must be new, empty or a previous conversion (`--overwrite`).
Details: docs/data_format.md (Module reference); the format: `deepfake_jax/data/records.py`.
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures
import datetime
import hashlib
import json
import multiprocessing
import os
import re
import sys
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import cv2
import numpy as np

from data_prep import layouts, report
from deepfake_jax import cli, json_io
from deepfake_jax.data import records
from deepfake_jax.data.image_io import (
    ImageDecodeError,
    decode_image_rgb,
    probe_image,
    read_image_file,
    sniff_format,
)

RECORDS_INDEX = "records.csv"
ARRAY_RECORD_OPTIONS = "group_size:1"
HIST_SAMPLE_PER_CLASS = 500
_PARTIAL_SUFFIX = ".array_record.partial"
_OWNED_FILES = (records.MANIFEST_NAME, RECORDS_INDEX) + report.REPORT_FILES
_SHARD_RE = re.compile(r"^[A-Za-z0-9_]+-\d{5}-of-\d{5}\.array_record$")
_PARTIAL_RE = re.compile(r"^\.[A-Za-z0-9_]+-\d{5}" + re.escape(_PARTIAL_SUFFIX) + "$")
_BATCH = 32
FORMATS = ("arrayrecord", "tfds")
MAX_SKIPPED_SHOWN = 20  # skipped files named on the console (all of them are in the report)


class OutputExistsError(FileExistsError):
    """The output folder already holds a converted dataset and --overwrite was not given, or it
    holds files this tool did not write."""


# ------------------------------------------------------------------------------------------
# Per-file work (runs in worker processes when workers > 1)


def _init_worker() -> None:
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)
    cv2.setNumThreads(1)


def process_file(path_abs: str, rel_path: str, want_hist: bool = False) -> dict[str, Any]:
    """Reads, hashes and validates one file. Returns {'ok': True, 'data', 'sha256', 'probe',
    'height', 'width', 'hist'} or {'ok': False, 'reason'}."""
    try:  # bounded: files over image_io.MAX_FILE_BYTES are refused before they are read
        data = read_image_file(path_abs)
    except ImageDecodeError as e:
        return {"ok": False, "reason": e.reason}
    sha = hashlib.sha256(data).hexdigest()
    try:
        img = decode_image_rgb(data, rel_path)
    except ImageDecodeError as e:
        return {"ok": False, "reason": e.reason, "sha256": sha, "num_bytes": len(data)}
    try:
        probe = probe_image(data, rel_path)
    except ImageDecodeError:  # OpenCV decoded what PIL cannot identify: keep it
        probe = {"width": img.shape[1], "height": img.shape[0], "mode": "unknown",
                 "format": sniff_format(data) or "unknown", "bit_depth": 8, "orientation": 1}
    hist = None
    if want_hist:
        hist = np.stack([cv2.calcHist([img], [c], None, [256], [0, 256])[:, 0]
                         for c in range(3)]).astype(np.int64)
    return {"ok": True, "data": data, "sha256": sha, "probe": probe, "height": img.shape[0],
            "width": img.shape[1], "hist": hist}


def _process_batch(batch: Sequence[tuple[str, str, bool]]) -> list[dict[str, Any]]:
    return [process_file(*task) for task in batch]


def _imap_ordered(
    tasks: Sequence[tuple[str, str, bool]], workers: int
) -> Iterator[dict[str, Any]]:
    """Results of process_file in task order; a bounded number of batches in flight."""
    if workers <= 1:
        for task in tasks:
            yield process_file(*task)
        return
    batches = [tasks[i:i + _BATCH] for i in range(0, len(tasks), _BATCH)]
    # spawn: safe when the caller already imported JAX (threads) - fork would not be.
    ctx = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(
        workers, mp_context=ctx, initializer=_init_worker
    ) as ex:
        pending: collections.deque = collections.deque()
        it = iter(batches)
        for b in it:
            pending.append(ex.submit(_process_batch, b))
            if len(pending) >= workers * 4:
                break
        while pending:
            results = pending.popleft().result()
            nxt = next(it, None)
            if nxt is not None:
                pending.append(ex.submit(_process_batch, nxt))
            yield from results


# ------------------------------------------------------------------------------------------
# Output folder handling


def _is_tfds_folder(path: str) -> bool:
    """A folder `tfds_export` wrote: only versions (`*/dataset_info.json`) or `incomplete.*`."""
    try:
        entries = os.listdir(path)
    except OSError:
        return False
    return bool(entries) and all(
        os.path.exists(os.path.join(path, d, "dataset_info.json")) or d.startswith("incomplete.")
        for d in entries)


def _classify_output(output_dir: str) -> tuple[list[str], list[str]]:
    """(markers of a previous conversion, entries this tool would not have written)."""
    markers, foreign = [], []
    for name in sorted(os.listdir(output_dir)):
        path = os.path.join(output_dir, name)
        if os.path.isdir(path) and not os.path.islink(path):
            (markers if _is_tfds_folder(path) else foreign).append(name)
        elif (name == records.MANIFEST_NAME or _SHARD_RE.match(name)
              or _PARTIAL_RE.match(name)):
            markers.append(name)
        elif name not in _OWNED_FILES and name != records.MANIFEST_NAME + ".tmp":
            foreign.append(name)
    return markers, foreign


def _shown(names: list[str]) -> str:
    return ", ".join(names[:5]) + (" ..." if len(names) > 5 else "")


def prepare_output(output_dir: str, overwrite: bool) -> None:
    """Creates the folder. Refuses (OutputExistsError) a folder that is not new or empty unless
    it is a previous conversion and holds nothing else (see the module docstring); that one
    only with overwrite, which removes the files this tool writes (manifest first)."""
    if os.path.exists(output_dir) and not os.path.isdir(output_dir):
        raise OutputExistsError(f"--output {output_dir} is a file, not a folder: choose a "
                                "new or empty folder")
    if os.path.isdir(output_dir) and os.listdir(output_dir):
        markers, foreign = _classify_output(output_dir)
        if not markers:
            raise OutputExistsError(
                f"output folder {output_dir} is not empty and holds no previous conversion "
                f"({_shown(foreign)}): choose a new or empty folder (--overwrite only replaces "
                "a conversion's own files)")
        if foreign:
            raise OutputExistsError(
                f"output folder {output_dir} holds a converted dataset and other files this "
                f"tool did not write ({_shown(foreign)}): move those away, or choose a new or "
                "empty folder")
        if not overwrite:
            raise OutputExistsError(
                f"output folder {output_dir} already holds a converted dataset "
                f"({_shown(markers)}); pass --overwrite to replace it, or choose another "
                "--output")
    os.makedirs(output_dir, exist_ok=True)
    if overwrite:
        manifest = os.path.join(output_dir, records.MANIFEST_NAME)
        if os.path.exists(manifest):
            os.remove(manifest)  # first: a crash from here on leaves no manifest
        for name in os.listdir(output_dir):
            if (name in _OWNED_FILES or name == records.MANIFEST_NAME + ".tmp"
                    or _SHARD_RE.match(name) or _PARTIAL_RE.match(name)):
                os.remove(os.path.join(output_dir, name))


# ------------------------------------------------------------------------------------------
# Conversion


def split_order(samples: Sequence[layouts.Sample], split: str, seed: int) -> list[int]:
    """Indices into `samples` (one split, path-sorted) in record order: a seeded shuffle."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, zlib.crc32(split.encode())]))
    return [int(i) for i in rng.permutation(len(samples))]


class _TfdsEntries:
    """`--format tfds`: collects one split's validated files (`_ShardWriter`'s interface);
    `tfds_export.write_tfds` writes them all once the listing is validated."""

    def __init__(self) -> None:
        self.entries: list = []
        self.count = 0

    def add(self, sample: layouts.Sample, sha256: str) -> int:
        from data_prep import tfds_export

        self.entries.append(tfds_export.Entry(sample.path_abs, sample.rel_path, sample.label,
                                              sha256, sample.meta))
        self.count += 1
        return 0

    def _close_current(self) -> None:
        pass


class _ShardWriter:
    """Writes one split's records into shards of `per_shard` under temporary names."""

    def __init__(self, output_dir: str, split: str, per_shard: int):
        from array_record.python.array_record_module import ArrayRecordWriter

        self._cls = ArrayRecordWriter
        self.output_dir, self.split, self.per_shard = output_dir, split, per_shard
        self.count = 0
        self.num_shards = 0
        self._writer = None

    def _tmp(self, i: int) -> str:
        return os.path.join(self.output_dir, f".{self.split}-{i:05d}{_PARTIAL_SUFFIX}")

    def write(self, record: bytes) -> int:
        """Returns the shard index the record went to."""
        if self._writer is None or self.count % self.per_shard == 0:
            self._close_current()
            self._writer = self._cls(self._tmp(self.num_shards), ARRAY_RECORD_OPTIONS)
            self.num_shards += 1
        self._writer.write(record)
        self.count += 1
        return self.num_shards - 1

    def _close_current(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def finish(self) -> list[str]:
        self._close_current()
        names = []
        for i in range(self.num_shards):
            name = records.shard_filename(self.split, i, self.num_shards)
            os.replace(self._tmp(i), os.path.join(self.output_dir, name))
            names.append(name)
        return names


def _progress(iterable: Iterable, total: int, enabled: bool, desc: str) -> Iterable:
    if not enabled:
        return iterable
    from tqdm import tqdm

    return tqdm(iterable, total=total, desc=desc, unit="img", dynamic_ncols=True,
                smoothing=0.05)


def convert(
    input_dir: str,
    output_dir: str,
    layout: str = "auto",
    split_ratios: str | Sequence[float] = (0.8, 0.1, 0.1),
    split_seed: int = 0,
    records_per_shard: int = 2000,
    overwrite: bool = False,
    workers: int = 1,
    show_progress: bool = True,
    log: Callable[[str], None] | None = None,
    output_format: str = "arrayrecord",
    tfds_name: str = "faces",
) -> dict[str, Any]:
    """Converts an image-folder dataset; returns the manifest (also written to output_dir).

    `output_format`: "arrayrecord" (our msgpack records) or "tfds" (a TFDS dataset named
    `tfds_name` in output_dir, see `tfds_export`).
    Raises layouts.LayoutError (unknown layout, no images), OutputExistsError, ValueError.
    """
    if records_per_shard < 1:
        raise ValueError(f"records_per_shard must be >= 1, got {records_per_shard}")
    if output_format not in FORMATS:
        raise ValueError(f"format {output_format!r}; choose from {', '.join(FORMATS)}")
    if output_format == "tfds":
        from data_prep import tfds_export

        tfds_export.check_name(tfds_name)
    log = log or (print if show_progress else (lambda _msg: None))
    input_dir = os.path.abspath(input_dir)
    output_dir = os.path.abspath(output_dir)
    real_in, real_out = os.path.realpath(input_dir), os.path.realpath(output_dir)
    if real_out == real_in:
        raise ValueError("--output must differ from --input (the images are not modified)")
    if os.path.commonpath([real_in, real_out]) == real_in:
        raise ValueError(f"--output {output_dir} is inside --input {input_dir}: the next "
                         "conversion of the input would read the output's files (report "
                         "plots) as images; choose a folder outside the input")
    if os.path.commonpath([real_in, real_out]) == real_out:
        raise ValueError(f"--input {input_dir} is inside --output {output_dir}: choose an "
                         "output folder outside the input")
    parsed = layouts.parse_dataset(input_dir, layout, split_ratios, split_seed)
    prepare_output(output_dir, overwrite)
    if output_format == "tfds" and overwrite:
        tfds_export.remove_previous(output_dir, tfds_name)

    by_split: dict[str, list[layouts.Sample]] = {}
    for s in parsed.samples:
        by_split.setdefault(s.split, []).append(s)
    split_names = [s for s in layouts.SPLITS if s in by_split]

    ordered: list[layouts.Sample] = []
    for split in split_names:
        members = by_split[split]
        ordered.extend(members[i] for i in split_order(members, split, split_seed))

    # A capped, seeded sample per class for the colour histograms.
    hist_rng = np.random.default_rng(np.random.SeedSequence([split_seed, 7]))
    want_hist = np.zeros(len(ordered), bool)
    for label in (records.LABEL_REAL, records.LABEL_FAKE):
        idx = [i for i, s in enumerate(ordered) if s.label == label]
        if idx:
            pick = hist_rng.choice(idx, size=min(len(idx), HIST_SAMPLE_PER_CLASS), replace=False)
            want_hist[pick] = True
    tasks = [(s.path_abs, s.rel_path, bool(want_hist[i])) for i, s in enumerate(ordered)]

    kept: list[dict[str, Any]] = []  # per-record facts for records.csv and the report
    skipped: list[dict[str, str]] = [
        {"path": rel, "reason": reason, "stage": "listing"} for rel, reason in parsed.skipped
    ]
    hists = {lab: np.zeros((3, 256), np.int64) for lab in (records.LABEL_REAL, records.LABEL_FAKE)}
    hist_counts = {records.LABEL_REAL: 0, records.LABEL_FAKE: 0}
    writers: dict[str, _ShardWriter] = {}

    old_level = cv2.utils.logging.getLogLevel()
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)
    try:
        results = _imap_ordered(tasks, max(1, int(workers)))
        for sample, res in _progress(zip(ordered, results, strict=True), len(tasks),
                                     show_progress, "convert"):
            if not res["ok"]:
                skipped.append({"path": sample.rel_path, "reason": res["reason"],
                                "stage": "decode"})
                continue
            w = writers.get(sample.split)
            if w is None:
                w = writers[sample.split] = (
                    _TfdsEntries() if output_format == "tfds"
                    else _ShardWriter(output_dir, sample.split, records_per_shard))
            index_in_split = w.count
            if output_format == "tfds":
                shard_idx = w.add(sample, res["sha256"])
            else:
                shard_idx = w.write(records.encode_record(
                    res["data"], sample.label, sample.rel_path, res["sha256"], sample.meta))
            if res["hist"] is not None:
                hists[sample.label] += res["hist"]
                hist_counts[sample.label] += 1
            probe = res["probe"]
            kept.append({
                "split": sample.split, "shard_idx": shard_idx, "index_in_split": index_in_split,
                "label": sample.label, "path": sample.rel_path, "sha256": res["sha256"],
                "meta": sample.meta, "width": res["width"], "height": res["height"],
                "mode": probe["mode"], "format": probe["format"],
                "bit_depth": probe["bit_depth"], "orientation": probe["orientation"],
                "num_bytes": len(res["data"]),
            })
    finally:
        cv2.utils.logging.setLogLevel(old_level)
        for w in writers.values():
            w._close_current()

    if output_format == "tfds":
        shard_names = tfds_export.write_tfds(
            output_dir, tfds_name, {split: writers[split].entries for split in split_names
                                    if split in writers})
        # records.csv: the dataset folder and the tfds.data_source index (TFDS picks shards)
        tfds_dir = os.path.join(tfds_name, tfds_export.VERSION)
        shard_of = lambda r: tfds_dir  # noqa: E731
    else:
        shard_names = {split: w.finish() for split, w in writers.items()}
        shard_of = lambda r: shard_names[r["split"]][r["shard_idx"]]  # noqa: E731
    notes = list(parsed.notes)
    for split in split_names:
        if split not in writers:
            notes.append(f"split {split!r}: every file was skipped; the split is left out")

    # records.csv
    import csv

    with open(os.path.join(output_dir, RECORDS_INDEX), "w", newline="") as f:
        out = csv.writer(f)
        out.writerow(["split", "shard", "index_in_split", "label", "path", "sha256", "meta"])
        for r in kept:
            out.writerow([r["split"], shard_of(r), r["index_in_split"],
                          r["label"], r["path"], r["sha256"],
                          json.dumps(r["meta"], sort_keys=True, separators=(",", ":"))])

    splits_info: dict[str, Any] = {}
    for split in layouts.SPLITS:
        if split not in writers:
            continue
        counts = collections.Counter(r["label"] for r in kept if r["split"] == split)
        splits_info[split] = {
            "files": shard_names[split],
            "num_records": writers[split].count,
            "counts": {name: counts.get(i, 0) for i, name in enumerate(records.CLASS_NAMES)},
        }
    if not splits_info:
        raise layouts.LayoutError(
            f"{input_dir}: none of the {len(tasks)} image files could be decoded; "
            f"first reasons: {[s['reason'] for s in skipped[-3:]]}"
        )

    manifest: dict[str, Any] = {
        "format_version": records.FORMAT_VERSION,
        "layout": parsed.layout,
        "input": input_dir,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(  # noqa: UP017 (py3.10)
            timespec="seconds"),
        "split_seed": split_seed,
        "split_ratios": list(parsed.split_ratios) if parsed.split_ratios else None,
        "split_source": ("folders" if parsed.has_official_split else "seeded_groups"
                         if parsed.layout == "videos" else "seeded_stratified"),
        "record_order": ("seeded shuffle within split: numpy default_rng(SeedSequence("
                         "[split_seed, crc32(split)])).permutation of the path-sorted samples"),
        "classes": list(records.CLASS_NAMES),
        "splits": splits_info,
        "records_index": RECORDS_INDEX,
        "skipped": len(skipped),
        "array_record_options": ARRAY_RECORD_OPTIONS,
        "report": "report.json",
    }
    if output_format == "tfds":  # not our record format: records.read_manifest says so
        del manifest["format_version"], manifest["array_record_options"]
        manifest["format"] = "tfds"
        manifest["tfds"] = {"name": tfds_name, "version": tfds_export.VERSION,
                            "builder_dir": os.path.join(tfds_name, tfds_export.VERSION)}
    rep = report.write_report(
        output_dir, manifest=manifest, kept=kept, skipped=skipped, hists=hists,
        hist_counts=hist_counts, notes=notes,
    )
    dup = rep["duplicates"]
    manifest["duplicates"] = {"within_split_groups": dup["within_split"]["num_groups"],
                              "cross_split_groups": dup["cross_split"]["num_groups"]}
    json_io.write_json(manifest, os.path.join(output_dir, records.MANIFEST_NAME))
    log(format_summary(manifest, rep, output_dir))
    return manifest


def format_summary(manifest: dict[str, Any], rep: dict[str, Any], output_dir: str) -> str:
    lines = [f"Converted {manifest['input']} (layout {manifest['layout']}) -> {output_dir}"]
    for split, info in manifest["splits"].items():
        c = info["counts"]
        lines.append(f"  {split:5s}: {info['num_records']:7d} records (real {c['real']}, "
                     f"fake {c['fake']}) in {len(info['files'])} shard(s)")
    reasons = collections.Counter(s["reason"].split(" (")[0] for s in rep["skipped"]["files"])
    lines.append(f"  skipped: {manifest['skipped']}"
                 + (f" ({dict(reasons.most_common(4))})" if reasons else ""))
    listed = rep["skipped"]["files"]
    for s in listed[:MAX_SKIPPED_SHOWN]:  # one line each: the file and why
        lines.append(f"    {s['path']}: {s['reason']}")
    if manifest["skipped"] > MAX_SKIPPED_SHOWN:
        lines.append(f"    ... and {manifest['skipped'] - MAX_SKIPPED_SHOWN} more (report.md)")
    d = manifest.get("duplicates", {})
    lines.append(f"  duplicate groups: {d.get('within_split_groups', 0)} within a split, "
                 f"{d.get('cross_split_groups', 0)} across splits (leakage)")
    conflicts = rep.get("duplicates", {}).get("label_conflicts", {})
    if conflicts.get("num_groups"):
        first = conflicts["groups"][0]
        shown = ", ".join(f"{e['split']}:{e['path']} ({e['label']})"
                          for e in first.get("entries", [])[:4])
        lines.append(f"  WARNING: {conflicts['num_groups']} group(s) of identical files carry "
                     f"both labels (e.g. {shown}; all in report.md): fix the labels or remove "
                     "the copies, then convert again")
    v = rep.get("videos")
    if v:
        lines.append(f"  videos: {v['num_videos']} ({v['num_frames']} frames, {v['num_groups']} "
                     f"groups); groups in more than one split: "
                     f"{v['groups_across_splits']['count']}")
    lines.append(f"  report: {os.path.join(output_dir, 'report.md')}")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------
# CLI


def build_parser() -> argparse.ArgumentParser:
    p = cli.ArgumentParser(
        prog="python -m data_prep.convert",
        description="Convert an image-folder dataset of real/fake faces to sharded ArrayRecord.",
    )
    p.add_argument("--input", required=True, help="dataset root folder")
    p.add_argument("--output", required=True, help="output folder (created)")
    p.add_argument("--layout", default="auto", choices=layouts.LAYOUT_CHOICES)
    p.add_argument("--split_ratios", default="0.8,0.1,0.1",
                   help="train,valid,test ratios for layouts without split folders")
    p.add_argument("--split_seed", type=int, default=0,
                   help="seed of the split (when made here) and of the record order")
    p.add_argument("--records_per_shard", type=int, default=2000)
    p.add_argument("--workers", type=int, default=1,
                   help="processes for read+validate+hash (default 1)")
    p.add_bool("overwrite", False, "replace a converted dataset already in --output")
    p.add_bool("quiet", False, "no progress bar")
    p.add_argument("--format", default="arrayrecord", choices=FORMATS,
                   help="arrayrecord (default; read with --config.data.dir) or tfds (a TFDS "
                        "dataset in --output; read with --config.data.tfds.name)")
    p.add_argument("--tfds_name", default="faces", help="the TFDS dataset name (--format tfds)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        convert(args.input, args.output, layout=args.layout, split_ratios=args.split_ratios,
                split_seed=args.split_seed, records_per_shard=args.records_per_shard,
                overwrite=args.overwrite, workers=args.workers, show_progress=not args.quiet,
                log=print, output_format=args.format, tfds_name=args.tfds_name)
    except (OutputExistsError, layouts.LayoutError, ValueError, ImportError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
