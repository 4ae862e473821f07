"""Tasks: what the training loop trains and how it scores it (`config.task`).

The loop (`training.trainer`) only sees the `Task` protocol; `make_task` picks the module.
"""

from __future__ import annotations

from typing import Any, Protocol

import ml_collections

from deepfake_jax.tasks import classification, segmentation
from deepfake_jax.training import trainer


class Task(Protocol):
    """What the loop needs from a task: data, steps, input pipeline, validation summary
    (ranked by `best_metric`) and the final evaluation."""

    best_metric: str

    def prepare_data(self, workdir: str) -> str:
        """Checks the config and the data, generating it if needed; returns the dataset folder."""

    def make_steps(self, mesh, graphdef, tx, schedule, state_shardings) -> tuple[Any, dict]:
        """(jitted train step, {use_ema: jitted eval step})."""

    def train_iterator(self, train_files: list[str]):
        """The checkpointable iterator of global training batches."""

    def validate(self, eval_fn, state, mesh, val_files: list[str]) -> dict[str, Any]:
        """The validation summary logged and ranked by `best_metric`."""

    def final_evaluation(self, eval_fn, state, mesh, dataset_dir: str, workdir: str, writer,
                         step: int) -> dict[str, Any]:
        """Metrics of every evaluated split, written under `<workdir>/eval/`."""


def make_task(config: ml_collections.ConfigDict) -> Task:
    """`config.task`: "classification" (default) or "segmentation" (face parsing)."""
    name = config.get("task", "classification")
    if name == "classification":
        return classification.ClassificationTask(config)
    if name == "segmentation":
        return segmentation.SegmentationTask(config)
    raise ValueError(f"config.task={name!r}; choose classification or segmentation")


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Trains, checkpoints and evaluates `config.task` in `workdir` (resuming if it holds a
    checkpoint); returns the loop's summary (`training.trainer.train_and_evaluate`)."""
    return trainer.train_and_evaluate(config, workdir, make_task(config))
