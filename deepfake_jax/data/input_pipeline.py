"""grain input pipelines over converted ArrayRecord datasets.

Train:  source -> global shuffle (new order each epoch) -> repeat -> this process's shard ->
        decode + augment (random_map: per-example RNG from seed and index) -> batch
        The augmentation policy can change with the epoch (`augment.AugmentSchedule`); each
        example's epoch follows from its position in the repeated stream, so the switch
        happens at the same example in a resumed run and with any number of processes.
Eval:   source -> this process's shard -> decode + center crop -> padded batches with a mask

Batches are host numpy dicts (`image` uint8 NHWC, `label` int32, ...); `sharding.host_to_global`
turns them into global arrays. Images stay uint8 until they are on the device (4x less copying);
the model's normalisation happens inside the jitted step.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator
from typing import Any

import grain
import numpy as np
from absl import flags

from deepfake_jax.data import augment, augment_ops, records
from deepfake_jax.data.image_io import decode_image_rgb
from deepfake_jax.data.pipeline_tuning import epoch_shuffle, keep_freed_memory
from deepfake_jax.data.tfds_source import TfdsSplit


@dataclasses.dataclass(frozen=True)
class Preprocess:
    crop_size: int
    resize_to: int | None = None
    eval_crop_size: int | None = None  # the eval view's center crop; None: crop_size
    flip_prob: float = 0.5
    # Eval only: (kind, level) applied to the full decoded image before the eval view, as a
    # degradation of the file itself would be (see augment_ops.corrupt).
    corruption: tuple[str, float] | None = None
    # Train only: photometric/JPEG/... augmentation after crop and flip, by epoch. None: crop
    # and flip only (the same as preset "none").
    augment: augment.AugmentSchedule | None = None

    @classmethod
    def from_config(cls, input_config: Any, augment_config: Any = None) -> Preprocess:
        """From `config.input` and (optionally) `config.augment`."""
        return cls(
            crop_size=int(input_config.crop_size),
            resize_to=input_config.get("resize_to") or None,
            eval_crop_size=input_config.get("eval_crop_size") or None,
            flip_prob=float(input_config.get("flip_prob", 0.5)),
            augment=(augment.AugmentSchedule.from_config(augment_config)
                     if augment_config is not None else None),
        )

    @property
    def eval_size(self) -> int:
        return int(self.eval_crop_size or self.crop_size)


def eval_crop_size(input_config: Any) -> int:
    """Side of the eval view (evaluate, predict, the app, export): `config.input.eval_crop_size`,
    or the training crop when unset."""
    return int(input_config.get("eval_crop_size") or input_config.crop_size)


def _decode(raw: bytes | dict[str, Any]) -> tuple[np.ndarray, dict[str, Any]]:
    keep_freed_memory()  # once per process: decoding into reused memory is ~1/3 faster
    # msgpack bytes from our shards; a TFDS split's source hands over the record dict itself
    record = raw if isinstance(raw, dict) else records.decode_record(raw)
    return decode_image_rgb(record["image"], record.get("path", "<record>")), record


def _with_index(index: int, raw: bytes) -> tuple[int, bytes]:
    return index, raw


class _TrainTransform(grain.transforms.RandomMap):
    """Decode + augment one (position in the repeated global stream, record) pair."""

    def __init__(self, preprocess: Preprocess, num_examples: int):
        self.preprocess = preprocess
        self.num_examples = num_examples

    def random_map(self, element: tuple[int, bytes], rng: np.random.Generator
                   ) -> dict[str, np.ndarray]:
        position, raw = element
        image, record = _decode(raw)
        p = self.preprocess
        if p.augment is None:
            image = augment_ops.train_view(image, rng, p.crop_size, p.flip_prob, p.resize_to)
        else:
            policy = p.augment.policy_at(position // self.num_examples)  # the epoch
            image = policy(image, rng, p.crop_size, p.flip_prob, p.resize_to)
        return {"image": image, "label": np.int32(record["label"])}


class _EvalTransform(grain.transforms.Map):
    def __init__(self, preprocess: Preprocess):
        self.preprocess = preprocess

    def map(self, element: tuple[int, bytes]) -> dict[str, np.ndarray]:
        index, raw = element
        image, record = _decode(raw)
        if self.preprocess.corruption:
            kind, level = self.preprocess.corruption
            rng = np.random.default_rng([index, 0xC0FFEE])  # the same noise on every run
            image = augment_ops.corrupt(image, kind, level, rng)
        image = augment_ops.eval_view(image, self.preprocess.eval_size, self.preprocess.resize_to)
        return {"image": image, "label": np.int32(record["label"]), "index": np.int32(index),
                "mask": np.float32(1.0)}


def open_records(files: list[str] | TfdsSplit):
    """The random-access records of one split: our ArrayRecord shards (msgpack bytes), or a
    TFDS split (`tfds_source.TfdsSplit`: record dicts)."""
    if isinstance(files, TfdsSplit):
        return files.source()
    return grain.sources.ArrayRecordDataSource(files)


def _source(files: list[str] | TfdsSplit) -> grain.MapDataset:
    return grain.MapDataset.source(open_records(files))


def num_records(files: list[str] | TfdsSplit) -> int:
    return len(open_records(files))


def train_iterator(
    files: list[str],
    preprocess: Preprocess,
    global_batch_size: int,
    seed: int,
    *,
    process_index: int = 0,
    process_count: int = 1,
    num_workers: int = 0,
    transform: grain.transforms.RandomMap | None = None,
    read_threads: int | None = None,
) -> grain.DatasetIterator:
    """An endless, checkpointable iterator of this process's part of each global batch.

    `transform`: decode + augment of one (stream position, record) pair; default the
    classification view of `preprocess` (face parsing passes `parsing_pipeline.TrainTransform`).
    `read_threads`: grain's prefetch threads in this process (None: grain's default; 0: work
    happens inside next(), as benchmarks per core need).
    """
    # Records read straight from the files in a cached per-epoch order: grain's per-element
    # shuffle and per-read metrics cost ~40% of a JPEG decode (pipeline_tuning).
    source = open_records(files)
    return stream_iterator(
        epoch_shuffle(source, seed).repeat(None),
        transform or _TrainTransform(preprocess, len(source)), global_batch_size, seed,
        process_index=process_index, process_count=process_count, num_workers=num_workers,
        read_threads=read_threads)


def stream_iterator(stream: grain.MapDataset, transform: grain.transforms.RandomMap,
                    global_batch_size: int, seed: int, *, process_index: int = 0,
                    process_count: int = 1, num_workers: int = 0,
                    read_threads: int | None = None) -> grain.DatasetIterator:
    """An endless record stream -> this process's batches of `transform`ed examples (the one
    path of every training pipeline, `domain_mix`'s too)."""
    if global_batch_size % process_count:
        raise ValueError(f"batch size {global_batch_size} not divisible by {process_count} hosts")
    # Augmentation randomness keyed by the global stream position (mapped before sharding),
    # so an example gets the same crop/flip whatever the process count.
    ds = stream.map_with_index(_with_index).random_map(transform, seed=seed)
    # Interleaved sharding: process i takes global positions i, i+P, ... of the shuffled stream,
    # so every global batch is a contiguous slice of that stream, whatever the process count.
    return shard_and_batch(ds, global_batch_size, process_index=process_index,
                           process_count=process_count, num_workers=num_workers,
                           read_threads=read_threads)


def shard_and_batch(ds: grain.MapDataset, global_batch_size: int, *, process_index: int = 0,
                    process_count: int = 1, num_workers: int = 0,
                    read_threads: int | None = None) -> grain.DatasetIterator:
    """This process's interleaved share of an endless example stream, batched and iterated
    (with `num_workers` grain worker processes); shared by every training pipeline."""
    ds = ds[process_index::process_count]
    ds = ds.batch(global_batch_size // process_count, drop_remainder=True)
    it_ds = ds.to_iter_dataset(None if read_threads is None else grain.ReadOptions(
        num_threads=read_threads, prefetch_buffer_size=max(1, 2 * read_threads)))
    if num_workers > 0:
        if not flags.FLAGS.is_parsed():  # grain workers read absl flags; outside app.run
            flags.FLAGS.mark_as_parsed()  # (scripts, notebooks) they would be unparsed
        it_ds = it_ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=num_workers))
    return iter(it_ds)


def eval_batches(
    files: list[str],
    preprocess: Preprocess,
    global_batch_size: int,
    *,
    process_index: int = 0,
    process_count: int = 1,
) -> Iterator[dict[str, np.ndarray]]:
    """Every record exactly once, in this process's shard, as equal-count padded batches.

    All processes yield the same number of batches (a global jitted step needs every process),
    padding with `mask == 0` examples; `index` is the record's position in the split.
    """
    source = _source(files)
    total = len(source)
    local_bs = global_batch_size // process_count
    ds = grain.MapDataset.range(total).map(lambda i: (i, source[i]))
    ds = ds[process_index::process_count].map(_EvalTransform(preprocess))
    num_batches = math.ceil(math.ceil(total / process_count) / local_bs)
    examples = iter(ds)
    crop = preprocess.eval_size
    for _ in range(num_batches):
        chunk = [ex for _, ex in zip(range(local_bs), examples, strict=False)]
        pad = local_bs - len(chunk)
        batch = {
            "image": np.zeros((local_bs, crop, crop, 3), np.uint8),
            "label": np.zeros((local_bs,), np.int32),
            "index": np.full((local_bs,), -1, np.int32),
            "mask": np.zeros((local_bs,), np.float32),
        }
        for key in batch:
            if chunk:
                batch[key][: local_bs - pad] = np.stack([ex[key] for ex in chunk])
        yield batch


def read_metadata(files: list[str]) -> list[dict[str, Any]]:
    """path/label/meta of every record of a split, in index order (image bytes dropped)."""
    source = open_records(files)
    out = []
    for i in range(len(source)):
        record = source[i]
        record = dict(record) if isinstance(record, dict) else records.decode_record(record)
        record.pop("image", None)
        out.append(record)
    return out


def skip_to_batch(iterator: grain.DatasetIterator, batches_done: int) -> None:
    """Moves a fresh `train_iterator` to the batch a run of any process count would be at.

    Every process's batch `k` is its slice of global batch `k` (interleaved sharding), so the
    position in batches is the same on every process, whatever the process count.
    """
    iterator.set_state({"next_index": int(batches_done)})

