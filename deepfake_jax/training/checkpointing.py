"""One orbax CheckpointManager per run with two items: the train state and the grain iterator.

Saving the iterator next to the weights means a resumed run sees exactly the batches an
uninterrupted run would have seen. Retention: the latest checkpoint plus the best `keep_best`
by a validation metric (higher is better), and the step `keep_step` names (early stopping's best).
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

import grain
import jax
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as policies


class CheckpointError(RuntimeError, ValueError):
    """A checkpoint that cannot be restored; one line naming the step folder and the reason.

    Also a ValueError, so that every command-line tool prints it as its one-line error."""


def one_line(error: BaseException, limit: int = 300) -> str:
    """`Type: first line of the message`, cut to `limit` characters (orbax's mismatch errors
    print the whole tree, hundreds of lines)."""
    text = next((line.strip() for line in str(error).splitlines() if line.strip()), "")
    text = text if len(text) <= limit else text[:limit - 3] + "..."
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def _quiet_closed_loop_callbacks() -> None:
    """When a restore fails, tensorstore still completes the reads orbax had started, and
    their callbacks hit orbax's closed event loop: each printed "RuntimeError: Event loop is
    closed" with a traceback (through sys.unraisablehook) around the one-line error. Drops
    exactly those; everything else still reaches the previous hook."""
    previous = sys.unraisablehook
    if getattr(previous, "_drops_closed_loop", False):
        return

    def hook(unraisable):
        value = unraisable.exc_value
        if isinstance(value, RuntimeError) and str(value) == "Event loop is closed":
            return
        previous(unraisable)

    hook._drops_closed_loop = True
    sys.unraisablehook = hook


# The step metadata key naming the workdir's config file of the run that saved a checkpoint.
CONFIG_KEY = "config_file"


# The validation metric (higher is better) that ranks a run's checkpoints, by `config.task`.
BEST_METRIC = {"classification": "val_roc_auc", "segmentation": "val_miou"}


# What inference needs of a train state: everything but the optimizer state.
WEIGHT_FIELDS = ("step", "params", "batch_stats", "ema_params", "ema_batch_stats")


def best_metric_of(config) -> str:
    """The metric a run with this config ranked its checkpoints by."""
    task = config.get("task", "classification")
    if task not in BEST_METRIC:
        raise ValueError(f"config.task={task!r}: expected one of {sorted(BEST_METRIC)}")
    return BEST_METRIC[task]


def open_run(workdir: str, config) -> Checkpointer:
    """The checkpoints of a training workdir, ranked by the run's own metric (read-only use:
    nothing is deleted unless something is saved)."""
    return Checkpointer(os.path.join(workdir, "checkpoints"),
                        keep_best=config.checkpoint.keep_best,
                        best_metric=best_metric_of(config), async_save=False)


class _KeepSteps:
    """Preservation policy: the steps in a set that can change between saves."""

    def __init__(self):
        self.steps: set[int] = set()

    def should_preserve(self, checkpoints, *, context) -> list[bool]:
        del context
        return [info.step in self.steps for info in checkpoints]


class Checkpointer:
    def __init__(self, directory: str, *, keep_best: int = 2, best_metric: str = "val_roc_auc",
                 async_save: bool = True):
        self.directory = os.path.abspath(directory)
        self.best_metric = best_metric
        # The file name of the config this run recorded (`metric_writer.save_config`): stored
        # in every checkpoint it saves, so loaders rebuild the model with that config.
        self.config_file: str | None = None
        metric_fn = lambda m: m[best_metric]
        self._keep = _KeepSteps()
        self.manager = ocp.CheckpointManager(
            self.directory,
            item_names=("state", "data"),
            options=ocp.CheckpointManagerOptions(
                best_fn=metric_fn,
                best_mode="max",
                preservation_policy=policies.AnyPreservationPolicy([
                    policies.LatestN(n=1),
                    policies.BestN(get_metric_fn=metric_fn, n=keep_best,
                                   keep_checkpoints_without_metrics=False),
                    self._keep,
                ]),
                enable_async_checkpointing=async_save,
                create=True,
            ),
        )

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def best_step(self) -> int | None:
        return self.manager.best_step()

    def select(self, checkpoint: str | int) -> int:
        """The step that `latest`, `best` (by `best_metric`) or a step number names.

        `best` of a run with no ranked checkpoint (stopped before its first validation) is
        refused rather than silently replaced by the latest."""
        steps = sorted(self.all_steps())
        if not steps:
            raise FileNotFoundError(f"no checkpoint in {self.directory}")
        checkpoint = str(checkpoint)
        if checkpoint == "latest":
            return self.latest_step()
        if checkpoint == "best":
            ranked = [s for s in steps if self.best_metric in (self.manager.metrics(s) or {})]
            if not ranked:
                raise ValueError(f"--checkpoint=best: no checkpoint in {self.directory} has "
                                 f"{self.best_metric} (no validation yet); use latest or one "
                                 f"of {steps}")
            return self.best_step()
        if checkpoint.isdigit() and int(checkpoint) in steps:
            return int(checkpoint)
        raise ValueError(f"--checkpoint={checkpoint!r}: use latest, best or one of {steps}")

    def keep_step(self, step: int | None) -> None:
        """Also keep checkpoint `step` from now on, whatever its rank (the early-stopping best,
        which may be ranked by another metric); replaces the previous such step; None: none."""
        self._keep.steps = set() if step is None else {int(step)}

    def all_steps(self) -> list[int]:
        return list(self.manager.all_steps())

    def save(self, step: int, state: Any, data_iterator: Any | None = None,
             metrics: dict[str, float] | None = None) -> None:
        items = {"state": ocp.args.StandardSave(state)}
        if data_iterator is not None:
            items["data"] = grain.checkpoint.CheckpointSave(data_iterator)
        if metrics is not None and self.best_metric not in metrics:
            metrics = None  # a checkpoint that cannot be ranked is kept only while it is latest
        custom = {CONFIG_KEY: self.config_file} if self.config_file else None
        self.manager.save(step, args=ocp.args.Composite(**items), metrics=metrics, force=True,
                          custom_metadata=custom)

    def saved_by(self, step: int) -> tuple[str | None, float | None]:
        """(config file name recorded by the run that saved `step`, None for checkpoints from
        before it was recorded; the save's start time in seconds since the epoch, or None).

        Read from orbax's step metadata file (`manager.metadata` would log a warning per
        item it is not given a handler for)."""
        path = os.path.join(self.directory, str(step), "_CHECKPOINT_METADATA")
        try:
            with open(path) as f:
                meta = json.load(f)
        except (OSError, ValueError):
            return None, None
        custom = meta.get("custom_metadata") or {}
        started = meta.get("init_timestamp_nsecs")
        return custom.get(CONFIG_KEY), (started / 1e9 if started else None)

    def restore(self, step: int, abstract_state: Any, data_iterator: Any | None = None
                ) -> tuple[Any, Any]:
        """Restores onto the shardings in `abstract_state` (any device count) and the iterator."""
        _quiet_closed_loop_callbacks()  # before: a failing read may call back at any time
        items = {"state": ocp.args.StandardRestore(abstract_state)}
        if data_iterator is not None and not self.data_written_by_other_process_count(step):
            items["data"] = grain.checkpoint.CheckpointRestore(data_iterator)
        restored = self._restore(step, items)
        return restored["state"], restored.get("data")

    def restore_weights(self, step: int, abstract_state: Any) -> Any:
        """The weights of `abstract_state`'s fields (params, BatchNorm statistics, their EMA,
        step) without the optimizer state, onto `abstract_state`'s shardings."""
        _quiet_closed_loop_callbacks()
        target = {k: getattr(abstract_state, k) for k in WEIGHT_FIELDS}
        restore_args = jax.tree.map(lambda s: ocp.ArrayRestoreArgs(sharding=s.sharding), target)
        restored = self._restore(step, {"state": ocp.args.PyTreeRestore(
            item=target, restore_args=restore_args, partial_restore=True)})
        return abstract_state.replace(**restored["state"])

    def _restore(self, step: int, items: dict[str, Any]) -> Any:
        try:
            return self.manager.restore(step, args=ocp.args.Composite(**items))
        except Exception as e:  # orbax raises many types; say which checkpoint failed and why
            others = [s for s in self.all_steps() if s != step]
            raise CheckpointError(
                f"could not restore checkpoint step {step} "
                f"({os.path.join(self.directory, str(step))}): "
                f"{one_line(e)} (its files are damaged or truncated, or it was written with "
                "another model/config than the one used to restore it; the files were left as "
                "they are" + (f"; other steps: {others}" if others else "") + ")"
            ) from e

    def data_written_by_other_process_count(self, step: int) -> bool:
        """True if the step's iterator state was saved by a job with another process count.

        grain writes one `process_<i>-of-<n>.json` per process; such a state cannot be loaded
        by a job with another `n`, so the caller re-positions a fresh iterator instead.
        """
        data_dir = os.path.join(self.directory, str(step), "data")
        if not os.path.isdir(data_dir):
            return False
        mine = f"process_{jax.process_index()}-of-{jax.process_count()}.json"
        return not os.path.exists(os.path.join(data_dir, mine))

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()
