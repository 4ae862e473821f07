"""One orbax CheckpointManager per run with two items: the train state and the grain iterator.

Saving the iterator next to the weights means a resumed run sees exactly the batches an
uninterrupted run would have seen. Retention: the latest checkpoint plus the best `keep_best`
by a validation metric (higher is better), and the step `keep_step` names (early stopping's best).
"""

from __future__ import annotations

import os
from typing import Any

import grain
import jax
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as policies


class CheckpointError(RuntimeError):
    pass


# The validation metric (higher is better) that ranks a run's checkpoints, by `config.task`.
BEST_METRIC = {"classification": "val_roc_auc", "segmentation": "val_miou"}


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
        self.manager.save(step, args=ocp.args.Composite(**items), metrics=metrics, force=True)

    def restore(self, step: int, abstract_state: Any, data_iterator: Any | None = None
                ) -> tuple[Any, Any]:
        """Restores onto the shardings in `abstract_state` (any device count) and the iterator."""
        items = {"state": ocp.args.StandardRestore(abstract_state)}
        if data_iterator is not None and not self.data_written_by_other_process_count(step):
            items["data"] = grain.checkpoint.CheckpointRestore(data_iterator)
        try:
            restored = self.manager.restore(step, args=ocp.args.Composite(**items))
        except Exception as e:  # orbax raises many types; say which checkpoint failed and why
            raise CheckpointError(
                f"could not restore checkpoint step {step} from {self.directory}: "
                f"{type(e).__name__}: {e}. If the files are truncated or were written by a "
                "different model/config, delete that step folder or use another workdir."
            ) from e
        return restored["state"], restored.get("data")

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
