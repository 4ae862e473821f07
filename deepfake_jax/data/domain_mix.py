"""Domain-balanced training over several converted datasets: `config.data.mix`.

    config.data.mix = (("140k", "/data/140k_ar", 0.7), ("ciplab", "/data/ciplab_ar", 0.3))

Training draws from each domain's train split with those weights (grain's `MapDataset.mix`: a
deterministic interleave in the given proportions of the domains' own shuffled, repeated
streams), whatever their sizes. Every example carries its domain index (`batch["domain"]`).
Validation and test are the union of every domain's split (in `mix` order); records are tagged
with their domain name, so the reports get per-domain rows (`metrics.subset_metrics`) and the
threshold is chosen on the pooled validation split.

The mixed stream is built before the per-process sharding, like the single-dataset pipeline:
augmentation is keyed by the global stream position, every global batch is a contiguous slice
of the stream on any process count, and the iterator state (grain's next index) checkpoints
and restores like `input_pipeline.train_iterator`'s. An "epoch" (for the step count and the
augmentation schedule) is as many examples as all domains' train splits hold together.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import grain
import numpy as np

from deepfake_jax.data import input_pipeline, records
from deepfake_jax.data.pipeline_tuning import epoch_shuffle


@dataclasses.dataclass(frozen=True)
class Domain:
    name: str
    dir: str
    weight: float


def parse_mix(mix: Any) -> list[Domain]:
    """`config.data.mix` -> domains; a clear error naming the bad entry."""
    if isinstance(mix, (str, bytes)) or not isinstance(mix, Sequence) or not mix:
        raise ValueError("config.data.mix must be a non-empty sequence of (domain_name, "
                         f"converted_dir, weight) triples, got {mix!r}")
    domains = []
    for i, entry in enumerate(mix):
        where = f"config.data.mix[{i}] = {entry!r}"
        if isinstance(entry, (str, bytes)) or not isinstance(entry, Sequence) or len(entry) != 3:
            raise ValueError(f"{where}: expected (domain_name, converted_dir, weight)")
        name, path, weight = entry
        if not isinstance(name, str) or not name:
            raise ValueError(f"{where}: the domain name must be a non-empty string")
        if not isinstance(path, str) or not path:
            raise ValueError(f"{where}: the dataset folder must be a path string")
        try:
            weight = float(weight)
        except (TypeError, ValueError):
            weight = float("nan")
        if not (math.isfinite(weight) and weight > 0):
            raise ValueError(f"{where}: the weight must be a positive number")
        domains.append(Domain(name, path, weight))
    names = [d.name for d in domains]
    if len(set(names)) != len(names):
        raise ValueError(f"config.data.mix: domain names must be unique, got {names}")
    return domains


def domains_of(config) -> list[Domain] | None:
    """The configured domains, or None when `config.data.mix` is unset (one dataset)."""
    mix = config.data.get("mix")
    return parse_mix(mix) if mix else None


def describe(domains: Sequence[Domain]) -> str:
    """A label for logs (not a folder: code that needs one fails loudly on it)."""
    return "mix[" + ", ".join(f"{d.name}={d.dir} x{d.weight:g}" for d in domains) + "]"


def check(domains: Sequence[Domain], splits: Sequence[str]) -> None:
    """Every domain folder is a converted dataset holding every split (fails early)."""
    for d in domains:
        try:
            for split in splits:
                records.split_files(d.dir, split)
        except (FileNotFoundError, KeyError, ValueError) as e:
            raise type(e)(f"config.data.mix domain {d.name!r}: {e}") from e


def domain_files(domains: Sequence[Domain], split: str) -> list[list[str]]:
    return [records.split_files(d.dir, split) for d in domains]


def union_files(domains: Sequence[Domain], split: str) -> list[str]:
    return [f for files in domain_files(domains, split) for f in files]


def file_domains(domains: Sequence[Domain], split: str) -> dict[str, str]:
    """{shard path: domain name} of one split."""
    return {f: d.name for d, files in zip(domains, domain_files(domains, split), strict=True)
            for f in files}


def record_domains(files: Sequence[str], domains_by_file: dict[str, str]) -> list[str]:
    """The domain name of every record of the concatenated `files`, in index order."""
    out: list[str] = []
    for f in files:
        out += [domains_by_file[f]] * input_pipeline.num_records([f])
    return out


def tag_listing(listing: list[dict[str, Any]], files: Sequence[str],
                domains_by_file: dict[str, str]) -> list[dict[str, Any]]:
    """`input_pipeline.read_metadata` rows with meta["domain"] set from the file they come
    from (a domain already in the record's own metadata wins)."""
    for row, name in zip(listing, record_domains(files, domains_by_file), strict=True):
        meta = dict(row.get("meta") or {})
        meta.setdefault("domain", name)
        row["meta"] = meta
    return listing


class _Tag(grain.transforms.Map):
    def __init__(self, domain: int):
        self.domain = domain

    def map(self, raw: bytes) -> tuple[int, bytes]:
        return self.domain, raw


class _Tagged(grain.transforms.RandomMap):
    """The single-dataset transform on (position, record), plus the example's domain index."""

    def __init__(self, inner: grain.transforms.RandomMap):
        self.inner = inner

    def random_map(self, element, rng: np.random.Generator) -> dict[str, np.ndarray]:
        position, (domain, raw) = element
        out = self.inner.random_map((position, raw), rng)
        out["domain"] = np.int32(domain)
        return out


def _domain_seed(seed: int, index: int) -> int:
    # independent shuffles per domain, a pure function of (seed, domain position in mix)
    return int(np.random.SeedSequence([int(seed), index]).generate_state(1)[0])


def train_iterator(
    per_domain_files: Sequence[list[str]],
    weights: Sequence[float],
    preprocess: input_pipeline.Preprocess,
    global_batch_size: int,
    seed: int,
    *,
    transform: grain.transforms.RandomMap | None = None,
    **stream_options,
) -> grain.DatasetIterator:
    """Like `input_pipeline.train_iterator`, drawing from each domain with `weights`
    (`stream_options`: those of `input_pipeline.stream_iterator`)."""
    if len(per_domain_files) != len(weights):
        raise ValueError(f"{len(per_domain_files)} domains but {len(weights)} weights")
    parts, total = [], 0
    for i, files in enumerate(per_domain_files):
        source = grain.sources.ArrayRecordDataSource(files)
        total += len(source)
        # the train pipeline's cached per-epoch order (pipeline_tuning), one per domain
        parts.append(epoch_shuffle(source, _domain_seed(seed, i)).repeat(None).map(_Tag(i)))
    inner = transform or input_pipeline._TrainTransform(preprocess, total)
    return input_pipeline.stream_iterator(  # examples: (global position, (domain, raw))
        grain.MapDataset.mix(parts, [float(w) for w in weights]), _Tagged(inner),
        global_batch_size, seed, **stream_options)


def per_domain_auc(labels: np.ndarray, scores: np.ndarray, names: Sequence[str]
                   ) -> dict[str, float | None]:
    """{domain: ROC AUC on its own reals and fakes} (None where one class is absent)."""
    from sklearn.metrics import roc_auc_score

    labels, names = np.asarray(labels), np.asarray(names)
    out: dict[str, float | None] = {}
    for name in dict.fromkeys(names.tolist()):
        m = names == name
        out[name] = (float(roc_auc_score(labels[m], np.asarray(scores)[m]))
                     if len(set(labels[m].tolist())) == 2 else None)
    return out
