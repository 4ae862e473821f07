"""Shared pieces of the seed-recipe configs (configs/<recipe>.py): argument checking and the
`:tiny` form. Not a config itself (no `get_config`).

The tiny form keeps a recipe's structure -- optimizer, schedule, phases, augmentation, MixUp,
label smoothing, EMA, early stopping, k-fold -- and shrinks only sizes: the built-in synthetic
faces at 32 px (24/8/8 per class and split, generated into the workdir: no `data.dir`), the
family's tiny variant, global batches of 16 (2 per device on 8 devices), a few steps, one
validation at the end.
"""

from __future__ import annotations

import os
from typing import Any

import ml_collections

# Where the documented `python -m data_prep.convert` commands write (README "Recipes").
DATA_140K = "/data/140k_ar"
DATA_CIPLAB = "/data/ciplab_ar"
DATA_RVF10K = "/data/rvf10k_ar"

TINY_IMAGE_SIZE = 32


def check_arg(config_file: str, arg: str | None, valid: tuple[str, ...]) -> None:
    """A clear error for an unknown `configs/x.py:ARG`, listing the valid ones."""
    if arg is not None and arg not in valid:
        names = ", ".join(repr(v) for v in valid)
        raise ValueError(f"configs/{os.path.basename(config_file)}: unknown argument {arg!r}; "
                         f"use nothing (the full recipe) or one of: {names}")


def shrink_to_tiny(config: ml_collections.ConfigDict, model: dict[str, Any], *,
                   steps: int = 3) -> None:
    """Test size in place: synthetic 32-px faces, `model` kwargs, `steps` steps of 16, one
    validation (at the end: each validation also writes a checkpoint, seconds on a CPU)."""
    config.data.dir = None  # -> the synthetic faces below, generated into <workdir>/data
    config.data.synthetic.update(train=24, valid=8, test=8, image_size=TINY_IMAGE_SIZE,
                                 difficulty=0.0, workers=1)
    config.input.update(crop_size=TINY_IMAGE_SIZE, eval_crop_size=None, resize_to=None,
                        batch_size=16, eval_batch_size=16, num_workers=0)
    config.model = ml_collections.ConfigDict(dict(model, dtype="float32"))
    config.num_train_steps = steps
    config.optimizer.warmup_steps = min(int(config.optimizer.warmup_steps), 1)
    config.log_every_steps = 1
    config.eval_every_steps = 1000
    config.checkpoint.update(every_steps=1000, async_save=False)


def optimizer_search_space(lr_low: float, lr_high: float) -> tuple:
    """`config.search.space` for recipes whose model has no `width` (the default space's)."""
    return (("optimizer.learning_rate", "log", lr_low, lr_high),
            ("optimizer.weight_decay", "log", 1e-3, 0.3),
            ("ema_decay", "choice", (0.99, 0.999, 0.9999)))
