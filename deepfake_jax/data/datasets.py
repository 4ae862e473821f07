"""Resolves `config.data` to a converted dataset folder, generating the built-in one if asked.

`config.data.dir` set: that converted dataset is used as it is.
`config.data.mix` set: several converted datasets, one per domain (`domain_mix.py`).
`config.data.tfds.name` set: a TFDS-prepared dataset read with `tfds.data_source`
(`tfds_source.py`); its splits are `tfds_source.TfdsSplit`s instead of shard lists.
`config.data.dir` unset: the built-in synthetic faces (`config.data.synthetic`) are generated
into `<workdir>/data/images` and converted to `<workdir>/data/arrayrecord`, once; later runs
and resumed runs reuse them.
"""

from __future__ import annotations

import os

import jax
from absl import logging
from jax.experimental import multihost_utils

from deepfake_jax.data import domain_mix, records, tfds_source


def tfds_config(config):
    """`config.data.tfds` when it names a dataset, else None."""
    tfds = config.data.get("tfds")
    return tfds if tfds is not None and tfds.get("name") else None


def prepare(config, workdir: str) -> str:
    data = config.data
    tfds = tfds_config(config)
    if tfds is not None:
        if data.get("dir") or data.get("mix"):
            raise ValueError("set config.data.tfds.name or config.data.dir / config.data.mix, "
                             "not both")
        if config.get("task", "classification") != "classification":
            raise ValueError(f"config.data.tfds is for classification runs, not {config.task!r}")
        for split in (data.train_split, data.val_split, data.get("test_split")):
            if split:  # opened once now: a wrong name, feature or split fails before training
                tfds_source.TfdsSplit.from_config(tfds, split).source()
        return tfds_source.TfdsSplit.from_config(tfds, data.train_split).describe()
    domains = domain_mix.domains_of(config)
    if domains:  # several converted datasets (domain_mix.py); checked now, read per split
        if data.get("dir"):
            raise ValueError("set config.data.mix or config.data.dir, not both")
        domain_mix.check(domains, [s for s in (data.train_split, data.val_split,
                                               data.get("test_split")) if s])
        return domain_mix.describe(domains)
    if data.get("dir"):
        records.read_manifest(data.dir)  # fails early, with the fix, if it is not converted
        return data.dir
    if not data.get("synthetic"):
        raise ValueError("config.data.dir is not set and config.data.synthetic is empty: "
                         "point config.data.dir at a folder written by data_prep.convert")
    out_dir = os.path.join(workdir, "data", "arrayrecord")
    ready = os.path.exists(os.path.join(out_dir, records.MANIFEST_NAME))
    if jax.process_index() == 0 and not ready:
        _generate_and_convert(data.synthetic, os.path.join(workdir, "data", "images"), out_dir)
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices("synthetic data ready")
    return out_dir


def prepare_single(config, workdir: str, purpose: str) -> str:
    """`prepare` for jobs that need one dataset folder (k-fold re-splits it, a search hands it
    to every trial): a clear error, naming `purpose`, when `config.data.mix` is set."""
    domains = domain_mix.domains_of(config)
    if tfds_config(config) is not None:
        raise ValueError(f"{purpose} needs a folder written by data_prep.convert, not a TFDS "
                         "dataset (config.data.tfds): convert the images with data_prep.convert")
    if domains:
        raise ValueError(
            f"{purpose} needs one converted dataset (config.data.dir, or the generated faces), "
            f"but config.data.mix combines {len(domains)} domains "
            f"({', '.join(d.name for d in domains)}): convert them into one folder with "
            "data_prep.convert, or unset config.data.mix")
    return prepare(config, workdir)


def split_files(config, dataset_dir: str, split: str) -> list[str]:
    """The shards of `split`: of `dataset_dir` (from `prepare`), or with `config.data.mix`
    every domain's, concatenated in mix order; with `config.data.tfds` a `TfdsSplit`."""
    tfds = tfds_config(config)
    if tfds is not None:
        return tfds_source.TfdsSplit.from_config(tfds, split)
    domains = domain_mix.domains_of(config)
    if domains:
        if config.get("task", "classification") != "classification":
            raise ValueError(f"config.data.mix is for classification runs, not {config.task!r}")
        return domain_mix.union_files(domains, split)
    return records.split_files(dataset_dir, split)


def _generate_and_convert(synth, images_dir: str, out_dir: str) -> None:
    from data_prep import convert, synthetic

    logging.info("Generating synthetic faces into %s", images_dir)
    synthetic.generate_140k(
        images_dir,
        counts={"train": synth.train, "valid": synth.valid, "test": synth.test},
        image_size=synth.image_size, difficulty=synth.difficulty, seed=synth.seed,
        num_workers=synth.get("workers", 1), progress=True,  # tens of seconds at full size
    )
    logging.info("Converting %s to ArrayRecord in %s", images_dir, out_dir)
    # A progress bar; the conversion summary is left out (training reports the counts).
    convert.convert(images_dir, out_dir, layout="140k", overwrite=True, show_progress=True,
                    log=lambda _msg: None)


def check_splits(config, dataset_dir: str) -> list[str]:
    """The splits the final evaluation can use (validation, then test), after refusing a
    converted dataset without the train or validation split (checked from its manifest, before
    training; mixes and TFDS datasets are checked by `prepare`). No test split (what
    `data_prep.convert --split_ratios 0.9,0.1` makes) is a warning: training goes on and the
    final evaluation covers the validation split only."""
    data = config.data
    splits = [s for s in (data.train_split, data.val_split, data.get("test_split")) if s]
    if tfds_config(config) is not None or domain_mix.domains_of(config):
        return splits[1:]
    found = records.read_manifest(dataset_dir).get("splits", {})
    where = os.path.join(dataset_dir, records.MANIFEST_NAME)
    for key, split in (("train_split", data.train_split), ("val_split", data.val_split)):
        if split not in found:
            raise ValueError(
                f"{where} has no {split!r} split (config.data.{key}; the dataset has "
                f"{sorted(found)}): training needs a train and a validation split; convert with "
                f"--split_ratios 0.8,0.1,0.1, or set --config.data.{key} to one of them")
    test = data.get("test_split")
    if test and test not in found:
        logging.warning("%s has no %r split (the dataset has %s): training goes on, and the "
                        "final evaluation covers the %r split only. For a held-out test, "
                        "convert with --split_ratios 0.8,0.1,0.1.", where, test, sorted(found),
                        data.val_split)
        splits.remove(test)
    return splits[1:]


def check_classification_splits(config, dataset_dir: str) -> list[str]:
    """`check_splits`, then the classes of each split (from the manifest's counts).

    Refused (ValueError): a train or validation split with one class only (nothing to tell
    apart; ROC AUC, the threshold and the checkpoint ranking are undefined on a one-class
    validation split). Warned about, training goes on: a one-class test split (its ROC AUC is
    undefined; accuracy still says how many were classified right).
    """
    eval_splits = check_splits(config, dataset_dir)
    if tfds_config(config) is not None or domain_mix.domains_of(config):
        return eval_splits
    found = records.read_manifest(dataset_dir).get("splits", {})
    test = config.data.get("test_split")
    for split in [config.data.train_split, *eval_splits]:
        counts = found[split].get("counts")
        if not counts:
            continue
        missing = [name for name in records.CLASS_NAMES if not counts.get(name)]
        if not missing:
            continue
        have = ", ".join(f"{counts.get(n, 0)} {n}" for n in records.CLASS_NAMES)
        if split == test:
            logging.warning("the %r split of %s has no %s images (%s): its ROC AUC is "
                            "undefined; training goes on", split, dataset_dir, missing[0], have)
            continue
        raise ValueError(
            f"the {split!r} split of {dataset_dir} has no {missing[0]} images ({have}): a "
            "real/fake detector needs both classes in its train and validation splits; add "
            f"{missing[0]} images and convert again (data_prep.convert stratifies "
            "--split_ratios by class)")
    return eval_splits
