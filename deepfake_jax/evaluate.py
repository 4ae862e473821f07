"""Evaluate a checkpoint written by the trainer, on any device count, with the trainer's code.

    python -m deepfake_jax.evaluate --workdir runs/demo [--workdir runs/other ...]
        [--checkpoint latest|best|STEP]
        [--use_ema|--nouse_ema] [--split test] [--data DIR --data DIR2 ...]
        [--threshold_method eer|max_f1|fixed] [--bootstrap 1000] [--robustness]

The threshold is chosen on the validation split of the run's own training data and applied
unchanged to every evaluated split (cross-dataset included). Each dataset/split gets
`<workdir>/eval/<dataset>/<split>/` with metrics.json (bootstrap 95% intervals, ECE),
predictions.csv and the plots."""

from __future__ import annotations

import os
import sys
from typing import Any

import jax
from absl import logging

from deepfake_jax import cli, console, json_io
from deepfake_jax.data import datasets, domain_mix, input_pipeline, parsing_pipeline, records
from deepfake_jax.evaluation import ensemble, evaluators, metrics
from deepfake_jax.runs import load_run_config, restore_weights, run_config_at, run_dataset_dir
from deepfake_jax.tasks import classification, segmentation
from deepfake_jax.training import sharding


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
                         "a real/fake classifier: its metrics come from "
                         "evaluate_parsing_checkpoint")
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
    graphdef, state, step = restore_weights(config, workdir, step, mesh)
    evals = classification.make_eval_steps(config, mesh, graphdef, jax.tree.map(
        lambda x: x.sharding,
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


def evaluate_ensemble(workdirs: list[str], *, checkpoint: str = "latest",
                      use_ema: bool | None = None, split: str = "test",
                      data: list[str] | None = None, threshold_method: str | None = None,
                      bootstrap: int = 1000, show_progress: bool = False,
                      out_dir: str | None = None) -> dict[str, dict[str, Any]]:
    """{dataset name: metrics of the ensemble of `workdirs` on `split`}
    (`evaluation.ensemble`). Each member is evaluated first (its own reports under its
    workdir); the ensemble's go to `out_dir` (default `<first workdir>/eval/ensemble`)
    `/<dataset>/<split>/`: metrics.json, predictions.csv (with each member's p_fake), plots."""
    ens = ensemble.Ensemble.of_runs(workdirs, threshold_method)  # fails before any scoring
    members = [evaluate_checkpoint(m.workdir, checkpoint=checkpoint, use_ema=use_ema,
                                   split=split, data=data, threshold_method=threshold_method,
                                   bootstrap=0, show_progress=show_progress)
               for m in ens.members]
    out_dir = out_dir or os.path.join(ens.members[0].workdir, "eval", "ensemble")
    results = {}
    for name, first in members[0].items():
        if any(name not in r for r in members[1:]):
            raise ValueError(f"the members evaluated differently named datasets ({name!r}): "
                             "give the same --data to all of them")
        preds = [ensemble.read_predictions(os.path.join(r[name]["out_dir"], "predictions.csv"))
                 for r in members]
        indices, paths, labels, p_fakes = ensemble.aligned(
            preds, [m.workdir for m in ens.members], f"{name}/{split}")
        p = ens.p_fake(p_fakes)
        m = metrics.binary_metrics(labels, p, ens.threshold)
        m.update(metrics.calibration(labels, p))
        if bootstrap:
            m["bootstrap_95"] = metrics.bootstrap_intervals(labels, p, ens.threshold, bootstrap)
        split_dir = os.path.join(out_dir, name, split)
        m.update(split=split, threshold_method=ens.threshold_method, dataset=first["dataset"],
                 threshold_from=f"the members' {ens.val_split} predictions",
                 checkpoint_step="/".join(str(r[name]["checkpoint_step"]) for r in members),
                 members=[{"workdir": mb.workdir, "val_log_odds_mean": mb.mean,
                           "val_log_odds_std": mb.std, "roc_auc": r[name]["roc_auc"]}
                          for mb, r in zip(ens.members, members, strict=True)])
        json_io.write_json(m, os.path.join(split_dir, "metrics.json"), sort_keys=True)
        metrics.save_plots(labels, p, m, split_dir, title=f"ensemble {name}/{split}")
        ensemble.write_predictions(os.path.join(split_dir, "predictions.csv"), indices, paths,
                                   labels, p, p_fakes, ens.threshold)
        results[name] = {**m, "out_dir": split_dir}
    return results


def evaluate_parsing_checkpoint(workdir: str, *, checkpoint: str = "latest",
                                split: str = "test", use_ema: bool | None = None,
                                show_progress: bool = False) -> dict[str, Any]:
    """Face-parsing metrics of one split for a saved checkpoint, written to
    `<workdir>/eval/step_<step>/<split>/` (the trainer's final evaluation code)."""
    workdir = os.path.abspath(workdir)
    config = load_run_config(workdir, checkpoint)
    if config.get("task") != "segmentation":
        raise ValueError(f"{workdir} is not a face-parsing run (config.task = "
                         f"{config.get('task', 'classification')!r})")
    use_ema = bool(config.eval.use_ema) if use_ema is None else use_ema
    mesh = sharding.make_mesh(None)
    batch_size = config.input.eval_batch_size
    batch_size -= batch_size % mesh.shape[sharding.DATA_AXIS]
    graphdef, state, step = restore_weights(config, workdir, checkpoint, mesh)
    evals = segmentation.make_eval_steps(config, mesh, graphdef,
                                         jax.tree.map(lambda x: x.sharding, state))
    files = records.split_files(run_dataset_dir(config, workdir), split)
    return segmentation.evaluate_split(
        evals[use_ema], state, mesh, files,
        parsing_pipeline.SegPreprocess.from_config(config.input),
        max(batch_size, mesh.shape[sharding.DATA_AXIS]),
        os.path.join(workdir, "eval", f"step_{step}", split), num_classes=int(config.num_classes),
        extra={"split": split, "use_ema": use_ema, "checkpoint_step": step},
        progress=f"scoring {split}" if show_progress else None)


def parsing_report(workdir: str, *, checkpoint: str = "latest", split: str = "test",
                   use_ema: bool | None = None) -> int:
    """Evaluates a face-parsing run and prints the summary and per-class IoU/F1."""
    m = evaluate_parsing_checkpoint(workdir, checkpoint=checkpoint, split=split,
                                    use_ema=use_ema, show_progress=True)
    print(f"step {m['checkpoint_step']} {split}: {segmentation.summary_line(m)}")
    for name, c in m["per_class"].items():
        if c["iou"] is not None:
            print(f"  {name:10s} IoU {c['iou']:.4f}  F1 {c['f1']:.4f}")
    return 0


def build_parser() -> cli.ArgumentParser:
    p = cli.ArgumentParser("python -m deepfake_jax.evaluate", __doc__)
    p.add_argument("--workdir", action="append", required=True,
                   help="a training workdir (config.json + checkpoints/); repeat it to "
                   "evaluate the ensemble of several classifiers trained on the same data")
    p.add_argument("--checkpoint", default="latest", help="latest, best (by the run's "
                   "validation metric: AUC, or mIoU for face parsing) or a step")
    p.add_bool("use_ema", None, "evaluate the EMA weights (default: the run's config.eval)")
    p.add_argument("--split", default="test", help="split to evaluate in each dataset")
    p.add_argument("--data", action="append", help="a converted dataset folder, repeatable "
                   "(default: the run's own); classifiers only")
    p.add_argument("--threshold_method", choices=("eer", "max_f1", "fixed"),
                   help="how validation picks the threshold (default: the run's config.eval)")
    p.add_argument("--bootstrap", type=int, default=1000,
                   help="bootstrap resamples for 95%% intervals (0: none)")
    p.add_bool("robustness", False, "also sweep JPEG/blur/resize/noise corruptions")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    console.setup(args.verbose)
    try:
        return _main(args)
    except (OSError, ValueError) as e:  # not a run, no/damaged checkpoint, bad --checkpoint,
        if args.verbose:  # --split or --data: one line (--verbose: the traceback)
            raise
        sys.exit(f"error: {e}")


def _main(args) -> int:
    if len(args.workdir) > 1:
        return _ensemble_main(args)
    args.workdir = args.workdir[0]
    if load_run_config(args.workdir).get("task") == "segmentation":
        # A face-parsing run: its metrics are mIoU/F1, not thresholds.
        unusable = [f"--{name}" for name in ("data", "threshold_method")
                    if getattr(args, name) is not None] + (["--robustness"] if args.robustness
                                                           else [])
        if unusable:
            sys.exit(f"{' '.join(unusable)}: classifier-only; {args.workdir} is a face-parsing "
                     "run")
        return parsing_report(args.workdir, checkpoint=args.checkpoint, split=args.split,
                              use_ema=args.use_ema)
    results = evaluate_checkpoint(
        args.workdir, checkpoint=args.checkpoint, use_ema=args.use_ema, split=args.split,
        data=args.data, threshold_method=args.threshold_method, bootstrap=args.bootstrap,
        show_progress=True, robustness=args.robustness)
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
    return 0



def _ensemble_main(args) -> int:
    if args.robustness:
        sys.exit("--robustness: one --workdir at a time (the ensemble has no robustness sweep)")
    results = evaluate_ensemble(
        args.workdir, checkpoint=args.checkpoint, use_ema=args.use_ema, split=args.split,
        data=args.data, threshold_method=args.threshold_method, bootstrap=args.bootstrap,
        show_progress=True)
    print(summary_table(results))
    for name, m in results.items():
        aucs = ", ".join(f"{r['workdir']} {r['roc_auc']:.4f}"
                         for r in m["members"])
        print(f"{name}: members' ROC AUC: {aucs}; ensemble -> {m['out_dir']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
