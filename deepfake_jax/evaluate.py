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

import json
import os
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
    logging_utils,
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


def load_run_config(workdir: str, checkpoint: str | int | None = "latest"
                    ) -> ml_collections.ConfigDict:
    """The config to rebuild the run's model with: that of the run which saved `checkpoint`
    (latest, best or a step; see `run_config_at`), so a later rerun that failed or changed the
    model never takes its place. The newest recorded config (`config.json`, or the newest
    `config.N.json`) when `checkpoint` is None or the workdir has no checkpoint yet."""
    if not os.path.isdir(workdir):
        raise FileNotFoundError(f"--workdir {workdir} does not exist: give a training workdir "
                                "(the --workdir of python -m deepfake_jax.main)")
    paths = logging_utils.config_files(workdir)
    if not paths:
        raise FileNotFoundError(f"{workdir} has no config.json: is it a training workdir?")
    newest = _read_config(paths[-1])
    if checkpoint is None or not os.path.isdir(os.path.join(workdir, "checkpoints")):
        return newest
    ckpt = checkpointing.open_run(workdir, newest)
    try:
        if not ckpt.all_steps():
            return newest
        name = logging_utils.config_for_step(workdir, ckpt, ckpt.select(checkpoint))
    finally:
        ckpt.close()
    return newest if name == os.path.basename(paths[-1]) else _read_config(
        os.path.join(workdir, name))


def _read_config(path: str) -> ml_collections.ConfigDict:
    try:
        with open(path) as f:
            return ml_collections.ConfigDict(json.load(f))
    except (OSError, ValueError) as e:
        raise ValueError(f"cannot read the run config {path}: {checkpointing.one_line(e)}") from e


def run_config_at(workdir: str, checkpoint: str | int = "latest"
                  ) -> tuple[ml_collections.ConfigDict, int]:
    """(config of the run that saved the checkpoint, its step); `checkpoint`: latest, best or
    a step. A later rerun's config (one that changed the model, say) never replaces it."""
    workdir = os.path.abspath(workdir)
    newest = load_run_config(workdir, None)
    ckpt = checkpointing.open_run(workdir, newest)
    try:
        step = ckpt.select(checkpoint)
        name = logging_utils.config_for_step(workdir, ckpt, step)
    finally:
        ckpt.close()
    return _read_config(os.path.join(workdir, name)), step


def run_dataset_dir(config: ml_collections.ConfigDict, workdir: str) -> str:
    """The run's converted dataset; with `config.data.mix`, a label for the domains (the files
    come from `datasets.split_files`)."""
    if config.data.get("mix"):
        return domain_mix.describe(domain_mix.parse_mix(config.data.mix))
    return config.data.get("dir") or os.path.join(workdir, "data", "arrayrecord")


def restore_state(config, workdir: str, checkpoint: str | int, mesh):
    """(graphdef, state, step) restored onto `mesh`, whatever device count wrote it;
    `checkpoint`: latest, best (by the run's own metric: val_roc_auc / val_miou) or a step.

    The model and optimizer are rebuilt from the config of the run that saved that checkpoint
    (`config` when the workdir does not say which), not from a later rerun's."""
    ckpt = checkpointing.open_run(workdir, config)
    try:
        step = ckpt.select(checkpoint)
        name = logging_utils.config_for_step(workdir, ckpt, step)
        if name is not None:
            config = _read_config(os.path.join(workdir, name))
        # Only the optimizer state's structure matters here (the restore target), not the
        # lengths.
        tx, _ = train.build_optimizer(config.optimizer, max(int(config.get("num_train_steps")
                                                                or 1), 1),
                                      model=train.abstract_model(config), steps_per_epoch=1)
        graphdef, abstract, _ = train.create_train_state(config, mesh, tx, abstract_only=True)
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
    config, step = run_config_at(workdir, checkpoint)
    if config.get("task", "classification") != "classification":
        raise ValueError(f"{workdir} is a {config.task} run (config.task = {config.task!r}), not "
                         "a real/fake classifier: evaluate it with python -m "
                         f"deepfake_jax.seg_train --workdir {workdir}")
    use_ema = bool(config.eval.use_ema) if use_ema is None else use_ema
    threshold_method = threshold_method or config.eval.threshold_method
    own = run_dataset_dir(config, workdir)
    mixed = domain_mix.domains_of(config)
    # Every dataset and split is checked before the model is restored.
    val_files = datasets.split_files(config, own, config.data.val_split)  # pooled with mix
    jobs = []
    for name, data_dir in dataset_names(config, own, data or [own]):
        files = (datasets.split_files(config, own, split) if data_dir == own
                 else records.split_files(data_dir, split))
        jobs.append((name, data_dir, files))
    mesh = sharding.make_mesh(None, devices=devices)
    batch_size = config.input.eval_batch_size
    batch_size -= batch_size % mesh.shape[sharding.DATA_AXIS]  # fits any device count
    graphdef, state, step = restore_state(config, workdir, step, mesh)
    evals = train.make_eval_steps(config, mesh, graphdef, jax.tree.map(lambda x: x.sharding,
                                                                        state))
    preprocess = input_pipeline.Preprocess.from_config(config.input)
    results = {}
    for name, data_dir, files in jobs:
        file_domains = ({**domain_mix.file_domains(mixed, config.data.val_split),
                         **domain_mix.file_domains(mixed, split)}
                        if mixed and data_dir == own else None)
        logging.info("Evaluating step %d (%s weights) on %s/%s (%s)", step,
                     "EMA" if use_ema else "raw", name, split, data_dir)
        out = evaluators.evaluate_splits(
            evals[use_ema], state, mesh, preprocess, batch_size,
            threshold_split=val_files, splits={split: files}, file_domains=file_domains,
            out_dir=os.path.join(workdir, "eval", name), threshold_method=threshold_method,
            extra={"use_ema": use_ema, "checkpoint_step": step, "dataset": data_dir,
                   "threshold_from": f"{own}:{config.data.val_split}"},
            bootstrap=bootstrap, show_progress=show_progress,
        )
        results[name] = out[split]
        results[name]["out_dir"] = os.path.join(workdir, "eval", name, split)
        if robustness:
            rows = evaluators.robustness_sweep(
                evals[use_ema], state, mesh, preprocess, batch_size,
                files, out[split]["threshold"],
                os.path.join(workdir, "eval", name, split), show_progress=show_progress,
                clean=out[split])
            results[name]["robustness"] = rows
    return results


def dataset_names(config, own: str, data_dirs: list[str]) -> list[tuple[str, str]]:
    """[(name, folder)]: each dataset's name in the table and its folder under `eval/`.

    The name is the folder's base name, or for the run's own data "synthetic", "mix" or the
    TFDS name. Names that would clash (two runs' `data/arrayrecord`) take parent folders until
    they differ (`run1_data_arrayrecord`); a folder given twice is evaluated once."""
    entries, seen = [], set()
    for data_dir in data_dirs:
        key = data_dir if data_dir == own else os.path.abspath(data_dir)
        if key in seen:
            logging.warning("--data %s given twice: evaluated once", data_dir)
            continue
        seen.add(key)
        entries.append(data_dir if data_dir == own else key)

    def own_name() -> str | None:
        if datasets.tfds_config(config) is not None:
            return config.data.tfds.name
        if domain_mix.domains_of(config):
            return "mix"
        return None if config.data.get("dir") else "synthetic"

    parts = [os.path.normpath(d).strip(os.sep).split(os.sep) for d in entries]
    fixed = [own_name() if d == own else None for d in entries]
    depth = [1] * len(entries)

    def name(i: int) -> str:
        return fixed[i] or "_".join(parts[i][-depth[i]:]) or "dataset"

    for _ in range(max((len(p) for p in parts), default=1)):
        names = [name(i) for i in range(len(entries))]
        clashing = [i for i, n in enumerate(names) if names.count(n) > 1 and fixed[i] is None
                    and depth[i] < len(parts[i])]
        if not clashing:
            break
        for i in clashing:
            depth[i] += 1
    names, out = [name(i) for i in range(len(entries))], []
    for i, n in enumerate(names):  # still equal (a name equal to "synthetic", say): number them
        out.append((n if names.count(n) == 1 else f"{n}_{names[:i + 1].count(n)}", entries[i]))
    return out


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
    except (OSError, ValueError) as e:  # not a run, no/damaged checkpoint, bad --checkpoint,
        if console.verbose_requested():  # --split or --data: one line (--verbose: traceback)
            raise
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
        print(f"{name}: {m['dataset']} -> {m['out_dir']}")
    for name, m in results.items():
        if m.get("subsets"):
            print(f"\nsubsets of {name}/{m['split']} (each: these fakes vs all reals):")
            print(evaluators.format_subsets(m["subsets"]))
        if "robustness" in m:
            print(f"\nrobustness of {name}/{m['split']} (threshold {m['threshold']:.4f}):")
            print(evaluators.format_robustness(m["robustness"]))


if __name__ == "__main__":
    app.run(main)
