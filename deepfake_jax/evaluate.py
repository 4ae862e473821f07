"""Evaluate a checkpoint written by the trainer, on any device count, with the trainer's code.

    python -m deepfake_jax.evaluate --workdir runs/demo [--checkpoint latest|best|STEP]
        [--use_ema|--nouse_ema] [--split test] [--data DIR --data DIR2 ...]
        [--threshold_method eer|max_f1|fixed] [--bootstrap 1000] [--robustness]

The threshold is chosen on the validation split of the run's own training data and applied
unchanged to every evaluated split (cross-dataset included). Each dataset/split gets
`<workdir>/eval/<dataset>/<split>/` with metrics.json (bootstrap 95% intervals, ECE),
predictions.csv and the plots.
"""

from __future__ import annotations

import glob
import json
import os
import re
import sys
from typing import Any

import jax
import ml_collections
from absl import app, flags, logging

from deepfake_jax import (
    checkpointing,
    console,
    datasets,
    domain_mix,
    evaluators,
    input_pipeline,
    records,
    sharding,
    train,
)

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "A training workdir (config.json + checkpoints/).")
flags.DEFINE_string("checkpoint", "latest", "latest, best (by the run's validation metric: "
                    "AUC, or mIoU for face parsing) or a step.")
flags.DEFINE_bool("use_ema", None, "Evaluate EMA weights (default: the run's config.eval).")
flags.DEFINE_string("split", "test", "Split to evaluate in each dataset.")
flags.DEFINE_multi_string("data", None, "Converted dataset folders (default: the run's own).")
flags.DEFINE_enum("threshold_method", None, ["eer", "max_f1", "fixed"],
                  "How validation picks the threshold (default: the run's config.eval).")
flags.DEFINE_integer("bootstrap", 1000, "Bootstrap resamples for 95% intervals (0: none).")
flags.DEFINE_bool("robustness", False, "Also sweep JPEG/blur/resize/noise corruptions.")


def load_run_config(workdir: str) -> ml_collections.ConfigDict:
    """The config the run last started with (`config.json`, or the newest `config.N.json`)."""
    paths = glob.glob(os.path.join(workdir, "config*.json"))
    if not paths:
        raise FileNotFoundError(f"{workdir} has no config.json: is it a training workdir?")
    number = lambda p: int(m.group(1)) if (m := re.search(r"config\.(\d+)\.json$", p)) else 0
    with open(max(paths, key=number)) as f:
        return ml_collections.ConfigDict(json.load(f))


def run_dataset_dir(config: ml_collections.ConfigDict, workdir: str) -> str:
    """The run's converted dataset; with `config.data.mix`, a label for the domains (the files
    come from `datasets.split_files`)."""
    if config.data.get("mix"):
        return domain_mix.describe(domain_mix.parse_mix(config.data.mix))
    return config.data.get("dir") or os.path.join(workdir, "data", "arrayrecord")


def restore_state(config, workdir: str, checkpoint: str, mesh):
    """(graphdef, state, step) restored onto `mesh`, whatever device count wrote it;
    `checkpoint`: latest, best (by the run's own metric: val_roc_auc / val_miou) or a step."""
    # Only the optimizer state's structure matters here (the restore target), not the lengths.
    tx, _ = train.build_optimizer(config.optimizer, max(int(config.get("num_train_steps")
                                                            or 1), 1),
                                  model=train.abstract_model(config), steps_per_epoch=1)
    graphdef, abstract, _ = train.create_train_state(config, mesh, tx, abstract_only=True)
    ckpt = checkpointing.open_run(workdir, config)
    try:
        step = ckpt.select(checkpoint)
        state, _ = ckpt.restore(step, abstract)
    finally:
        ckpt.close()
    return graphdef, state, step


def evaluate_checkpoint(workdir: str, *, checkpoint: str = "latest", use_ema: bool | None = None,
                        split: str = "test", data: list[str] | None = None,
                        threshold_method: str | None = None, bootstrap: int = 1000,
                        devices: list | None = None, show_progress: bool = False,
                        robustness: bool = False) -> dict[str, dict[str, Any]]:
    """Returns {dataset name: metrics of `split`}; writes the reports under workdir/eval/."""
    workdir = os.path.abspath(workdir)
    config = load_run_config(workdir)
    if config.get("task", "classification") != "classification":
        raise ValueError(f"{workdir} is a {config.task} run (config.task = {config.task!r}), not "
                         "a real/fake classifier: evaluate it with python -m "
                         f"deepfake_jax.seg_train --workdir {workdir}")
    use_ema = bool(config.eval.use_ema) if use_ema is None else use_ema
    threshold_method = threshold_method or config.eval.threshold_method
    mesh = sharding.make_mesh(None, devices=devices)
    batch_size = config.input.eval_batch_size
    batch_size -= batch_size % mesh.shape[sharding.DATA_AXIS]  # fits any device count
    graphdef, state, step = restore_state(config, workdir, checkpoint, mesh)
    evals = train.make_eval_steps(config, mesh, graphdef, jax.tree.map(lambda x: x.sharding,
                                                                        state))
    preprocess = input_pipeline.Preprocess.from_config(config.input)
    own = run_dataset_dir(config, workdir)
    val_files = datasets.split_files(config, own, config.data.val_split)  # pooled with mix
    mixed = domain_mix.domains_of(config)
    results = {}
    for data_dir in data or [own]:
        name = "synthetic" if data_dir == own and not config.data.get("dir") else (
            os.path.basename(os.path.normpath(data_dir)))
        name = "mix" if mixed and data_dir == own else name
        if data_dir == own and datasets.tfds_config(config) is not None:
            name = config.data.tfds.name  # its splits are read with tfds.data_source
        files = (datasets.split_files(config, own, split) if data_dir == own
                 else records.split_files(data_dir, split))
        file_domains = ({**domain_mix.file_domains(mixed, config.data.val_split),
                         **domain_mix.file_domains(mixed, split)}
                        if mixed and data_dir == own else None)
        logging.info("Evaluating step %d (%s weights) on %s/%s", step,
                     "EMA" if use_ema else "raw", name, split)
        out = evaluators.evaluate_splits(
            evals[use_ema], state, mesh, preprocess, batch_size,
            threshold_split=val_files, splits={split: files}, file_domains=file_domains,
            out_dir=os.path.join(workdir, "eval", name), threshold_method=threshold_method,
            extra={"use_ema": use_ema, "checkpoint_step": step, "dataset": data_dir,
                   "threshold_from": f"{own}:{config.data.val_split}"},
            bootstrap=bootstrap, show_progress=show_progress,
        )
        results[name] = out[split]
        if robustness:
            rows = evaluators.robustness_sweep(
                evals[use_ema], state, mesh, preprocess, batch_size,
                files, out[split]["threshold"],
                os.path.join(workdir, "eval", name, split), show_progress=show_progress,
                clean=out[split])
            results[name]["robustness"] = rows
    return results


def summary_table(results: dict[str, dict[str, Any]]) -> str:
    keys = ("num_examples", "roc_auc", "accuracy", "f1", "eer", "average_precision", "ece")
    lines = [f"{'dataset/split':28s} " + " ".join(f"{k:>12s}" for k in keys)]
    for name, m in results.items():
        cells = [f"{m[k]:12.4f}" if isinstance(m.get(k), float) else f"{m.get(k)!s:>12s}"
                 for k in keys]
        lines.append(f"{name + '/' + m['split']:28s} " + " ".join(cells))
    any_m = next(iter(results.values()))
    lines.append(f"threshold {any_m['threshold']:.4f} ({any_m['threshold_method']}) from "
                 f"{any_m['threshold_from']}; checkpoint step {any_m['checkpoint_step']}")
    return "\n".join(lines)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if not FLAGS.workdir:
        sys.exit("--workdir is required")
    console.setup()
    try:
        return _main()
    except (FileNotFoundError, ValueError) as e:  # not a run, no checkpoint, bad --checkpoint
        sys.exit(f"error: {e}")


def _main():
    if load_run_config(FLAGS.workdir).get("task") == "segmentation":
        # A face-parsing run: its metrics are mIoU/F1, not thresholds, so hand over to its own
        # evaluator; the classifier-only flags have no meaning there.
        # Run as `python -m`, this module is __main__: register it under its package name so
        # that seg_train's `from deepfake_jax import evaluate` does not define the flags twice.
        sys.modules.setdefault("deepfake_jax.evaluate", sys.modules[__name__])
        from deepfake_jax import seg_train

        unusable = [f"--{name}" for name in ("data", "threshold_method", "robustness")
                    if FLAGS[name].present]
        if unusable:
            sys.exit(f"{' '.join(unusable)}: classifier-only; {FLAGS.workdir} is a face-parsing "
                     f"run, see python -m deepfake_jax.seg_train --help")
        return seg_train.report(FLAGS.workdir, checkpoint=FLAGS.checkpoint, split=FLAGS.split,
                                use_ema=FLAGS.use_ema)
    results = evaluate_checkpoint(
        FLAGS.workdir, checkpoint=FLAGS.checkpoint, use_ema=FLAGS.use_ema, split=FLAGS.split,
        data=FLAGS.data, threshold_method=FLAGS.threshold_method, bootstrap=FLAGS.bootstrap,
        show_progress=True, robustness=FLAGS.robustness)
    print(summary_table(results))
    for name, m in results.items():
        if m.get("subsets"):
            print(f"\nsubsets of {name}/{m['split']} (each: these fakes vs all reals):")
            print(evaluators.format_subsets(m["subsets"]))
        if "robustness" in m:
            print(f"\nrobustness of {name}/{m['split']} (threshold {m['threshold']:.4f}):")
            print(evaluators.format_robustness(m["robustness"]))


if __name__ == "__main__":
    app.run(main)
