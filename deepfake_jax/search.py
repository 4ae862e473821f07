"""Hyper-parameter search with Optuna (TPE by default); every trial is an ordinary run.

    python -m deepfake_jax.search --config configs/default.py --workdir runs/search \\
        [--config.search.num_trials=20] [--config.x=y ...]

`config.search` says what to tune and on which number (always a validation split: the test
split must not choose the model):

    metric      a key of eval/<split>/metrics.json, e.g. "roc_auc"
    split       "valid"
    direction   "maximize" | "minimize"
    num_trials  trials to complete (counting those of earlier invocations)
    space       ((dotted_key, kind, *args), ...) with kind
                  "log" low high      float, log-uniform, e.g.
                                      ("optimizer.learning_rate", "log", 1e-4, 1e-2)
                  "float" low high    float, uniform
                  "int" low high      integer, inclusive
                  "choice" (a, b, ..) one of the values

Trial n trains in `<workdir>/trial_<n>/` on the same dataset (generated once, if synthetic).
The study lives in `<workdir>/study.db` (SQLite): rerunning the command continues it, and a
trial that was cut off is retried in its own workdir, so its run resumes from its checkpoint.
`<workdir>/results.{json,md}` list every trial (parameters, validation metric, test metric,
wall time), best first. Runs in one process (several devices are fine); Optuna is the `search`
extra: `pip install -e '.[search]'`.
"""

from __future__ import annotations

import copy
import json
import os
import sys
import time
from typing import Any

import ml_collections
from absl import app, flags, logging
from ml_collections import config_flags

from deepfake_jax import console, json_io, tasks
from deepfake_jax.data import datasets

FLAGS = flags.FLAGS
STUDY_NAME = "deepfake_jax"


def _require_optuna():
    try:
        import optuna
    except ImportError:
        raise ImportError("hyper-parameter search needs Optuna: pip install -e '.[search]'"
                          ) from None
    return optuna


def sample(trial, space) -> dict[str, Any]:
    """One value per entry of `config.search.space` from an Optuna trial."""
    params = {}
    for entry in space:
        key, kind, *args = entry
        if kind == "log":
            params[key] = trial.suggest_float(key, float(args[0]), float(args[1]), log=True)
        elif kind == "float":
            params[key] = trial.suggest_float(key, float(args[0]), float(args[1]))
        elif kind == "int":
            params[key] = trial.suggest_int(key, int(args[0]), int(args[1]))
        elif kind == "choice":
            params[key] = trial.suggest_categorical(key, list(args[0]))
        else:
            raise ValueError(f"config.search.space entry {tuple(entry)}: kind {kind!r} is not "
                             "one of log, float, int, choice")
    return params


def trial_config(config: ml_collections.ConfigDict, params: dict[str, Any], data_dir: str
                 ) -> ml_collections.ConfigDict:
    out = copy.deepcopy(config)
    with out.unlocked():
        out.data.dir = data_dir
        for dotted, value in params.items():
            *parents, leaf = dotted.split(".")
            node = out
            for name in parents:
                node = node[name]
            if leaf not in node:
                raise KeyError(f"config.search.space names {dotted!r}, which is not in the "
                               "config")
            node[leaf] = value
    return out


def _metrics(run_dir: str, split: str) -> dict[str, Any] | None:
    path = os.path.join(run_dir, "eval", split, "metrics.json")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def _retry_interrupted(study, optuna) -> None:
    """Trials left RUNNING by a killed search: failed, and queued again with their workdir."""
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        study._storage.set_trial_state_values(t._trial_id, optuna.trial.TrialState.FAIL)
        workdir = t.user_attrs.get("workdir")
        logging.warning("trial %d was interrupted: retried (resuming in %s)", t.number, workdir)
        study.enqueue_trial(t.params, user_attrs={"workdir": workdir})


def results_table(study, optuna, search) -> list[dict[str, Any]]:
    rows = []
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
        rows.append({"trial": t.number, "value": t.value, "params": t.params,
                     "test": t.user_attrs.get("test"), "seconds": t.user_attrs.get("seconds"),
                     "workdir": t.user_attrs.get("workdir")})
    rows.sort(key=lambda r: r["value"], reverse=search.direction == "maximize")
    return rows


def format_results(rows: list[dict[str, Any]], search) -> str:
    keys = [entry[0] for entry in search.space]
    head = (["trial", f"{search.split} {search.metric}", f"test {search.metric}"] + keys
            + ["seconds"])
    lines = ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    for r in rows:
        fmt = lambda v: f"{v:.4g}" if isinstance(v, float) else str(v)
        lines.append("| " + " | ".join(
            [str(r["trial"]), f"{r['value']:.4f}",
             "-" if r["test"] is None else f"{r['test']:.4f}"]
            + [fmt(r["params"].get(k)) for k in keys]
            + ["-" if r["seconds"] is None else f"{r['seconds']:.0f}"]) + " |")
    return "\n".join(lines)


def run_search(config: ml_collections.ConfigDict, workdir: str) -> list[dict[str, Any]]:
    optuna = _require_optuna()
    search = config.get("search")
    if search is None or not search.get("space"):
        raise ValueError("config.search.space is empty: nothing to tune (see "
                         "deepfake_jax/search.py for the format)")
    workdir = os.path.abspath(workdir)
    os.makedirs(workdir, exist_ok=True)
    # generated once, shared by every trial
    data_dir = datasets.prepare_single(config, workdir, "the hyper-parameter search")
    sampler = optuna.samplers.TPESampler(seed=int(config.seed))
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        study_name=STUDY_NAME, storage=f"sqlite:///{os.path.join(workdir, 'study.db')}",
        sampler=sampler, direction=search.direction, load_if_exists=True)
    _retry_interrupted(study, optuna)

    def objective(trial):
        params = sample(trial, search.space)
        run_dir = trial.user_attrs.get("workdir") or os.path.join(
            workdir, f"trial_{trial.number:03d}")
        trial.set_user_attr("workdir", run_dir)
        logging.info("trial %d: %s -> %s", trial.number, params, run_dir)
        start = time.time()
        tasks.train_and_evaluate(trial_config(config, params, data_dir), run_dir)
        val, test = _metrics(run_dir, search.split), _metrics(run_dir, config.data.test_split)
        if val is None or val.get(search.metric) is None:
            raise ValueError(f"{run_dir}: no {search.metric} in eval/{search.split}/metrics.json")
        trial.set_user_attr("seconds", time.time() - start)
        trial.set_user_attr("test", test.get(search.metric) if test else None)
        return float(val[search.metric])

    done = len(study.get_trials(states=(optuna.trial.TrialState.COMPLETE,)))
    remaining = max(int(search.num_trials) - done, 0)
    logging.info("search: %d trials done, %d to run", done, remaining)
    for i in range(remaining):
        study.optimize(objective, n_trials=1, catch=())
        rows = results_table(study, optuna, search)
        _write_results(rows, search, workdir)
        best = rows[0]
        logging.info("trial %d/%d done; best so far: trial %d, %s %s = %.4f", done + i + 1,
                     search.num_trials, best["trial"], search.split, search.metric,
                     best["value"])
    rows = results_table(study, optuna, search)
    _write_results(rows, search, workdir)
    logging.info("search results (best first):\n%s", format_results(rows, search))
    return rows


def _write_results(rows, search, workdir: str) -> None:
    json_io.write_json(rows, os.path.join(workdir, "results.json"))
    with open(os.path.join(workdir, "results.md"), "w") as f:
        f.write(f"# Hyper-parameter search ({search.direction} {search.split} "
                f"{search.metric})\n\n{format_results(rows, search)}\n")


def _define_flags() -> None:
    """Only for the CLI: importing this module must not claim --workdir (evaluate has it)."""
    flags.DEFINE_string("workdir", None, "Where the study, the trial runs and the results go.")
    config_flags.DEFINE_config_file("config", None, "An ml_collections config file.",
                                    lock_config=True)
    flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    console.setup()
    try:
        run_search(FLAGS.config, FLAGS.workdir)
    except (ImportError, ValueError, KeyError) as e:
        sys.exit(f"search: {e}")


if __name__ == "__main__":
    _define_flags()
    app.run(main)
