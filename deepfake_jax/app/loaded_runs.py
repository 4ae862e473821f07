"""The app's model side: runs restored once at start-up, then scored per upload.

A `LoadedRun` is one training workdir: its config, the checkpoint restored onto the local devices
and the trainer's jitted eval step compiled (both by `scoring.Scorer`, so the app scores a file
exactly as `python -m deepfake_jax.predict` does), the threshold its evaluation recorded, and the
evaluation reports on disk. Nothing here knows about HTTP.
"""

from __future__ import annotations

import dataclasses
import glob
import importlib
import json
import math
import os
import time
from typing import Any

import jax
import numpy as np
from absl import logging
from flax import nnx

from deepfake_jax import runs
from deepfake_jax.data import input_pipeline
from deepfake_jax.inference import scoring
from deepfake_jax.training import train_state

# Plots written by `metrics.save_plots` / `evaluators.robustness_sweep`, in display order.
PLOT_ORDER = ("roc.png", "pr.png", "confusion_matrix.png", "score_histogram.png",
              "reliability.png", "robustness.png")
# Metrics shown on the models page, in this order, when a metrics.json has them.
METRIC_KEYS = ("num_examples", "roc_auc", "average_precision", "accuracy", "balanced_accuracy",
               "precision", "recall", "f1", "eer", "log_loss", "ece", "threshold",
               "threshold_method", "checkpoint_step", "use_ema")


@dataclasses.dataclass
class EvalReport:
    """One `<workdir>/eval/.../metrics.json` and the plots beside it."""

    name: str  # the folder relative to <workdir>/eval: "test", "valid", "synthetic/test"
    metrics: dict[str, Any]
    plots: list[str]  # file names relative to <workdir>/eval
    error: str = ""  # why metrics.json could not be read ("" when it could)


def optional_module(name: str):
    """The module `name`, or None when it is not installed or not written yet.

    The heatmap part (`deepfake_jax.inference.explain`) is
    optional: without them the app still scores images and says what is missing.
    """
    try:
        return importlib.import_module(name)
    except ImportError as e:
        logging.info("%s not available: %s", name, e)
        return None


def find_eval_reports(workdir: str) -> list[EvalReport]:
    """Every evaluation under `<workdir>/eval` (the trainer's `eval/<split>/` and the evaluate
    command's `eval/<dataset>/<split>/`), sorted by name; unreadable metrics files are kept with
    the reason so the page can say so."""
    root = os.path.join(workdir, "eval")
    paths = sorted(glob.glob(os.path.join(root, "*", "metrics.json")) +
                   glob.glob(os.path.join(root, "*", "*", "metrics.json")))
    reports = []
    for path in paths:
        folder = os.path.dirname(path)
        name = os.path.relpath(folder, root).replace(os.sep, "/")
        metrics, error = {}, ""
        try:
            with open(path) as f:
                metrics = json.load(f)
            if not isinstance(metrics, dict):
                raise ValueError(f"expected a JSON object, got {type(metrics).__name__}")
        except (OSError, ValueError) as e:
            metrics, error = {}, f"cannot read {path}: {e}"
        present = set(os.listdir(folder))
        plots = [p for p in PLOT_ORDER if p in present]
        plots += sorted(p for p in present if p.endswith(".png") and p not in PLOT_ORDER)
        reports.append(EvalReport(name, metrics, [f"{name}/{p}" for p in plots], error))
    return reports


def config_summary(config) -> list[tuple[str, str]]:
    """The settings that tell runs apart, as (label, value) rows."""
    model = dict(config.get("model", {}) or {})
    opt = config.get("optimizer", {}) or {}
    data_dir = config.data.get("dir") or "synthetic (generated into the workdir)"
    rows = [
        ("model", f"{config.model_name} " + ", ".join(f"{k}={v}" for k, v in model.items())),
        ("input", f"crop {config.input.crop_size} px (eval "
                  f"{input_pipeline.eval_crop_size(config.input)} px), resize_to "
                  f"{config.input.get('resize_to') or 'none'}"
                  + (", mirror TTA" if config.eval.get("flip_tta") else "")),
        ("data", str(data_dir)),
        ("training", (f"{config.num_train_steps} steps" if config.get("num_train_steps")
                      else f"{config.get('num_epochs')} epochs") +
                     f", batch {config.input.batch_size}"),
        ("optimizer", f"{opt.get('name', '?')} lr {opt.get('learning_rate', '?')}, "
                      f"weight decay {opt.get('weight_decay', '?')}, {opt.get('schedule', '?')}"),
        ("EMA", f"decay {config.get('ema_decay')}, evaluated with EMA: "
                f"{config.get('eval', {}).get('use_ema')}"),
        ("threshold method", str(config.get("eval", {}).get("threshold_method"))),
    ]
    return rows


class LoadedRun:
    """A training workdir with its model restored and its eval step compiled (at construction).

    `score(views)` runs any number of eval views through the jitted step in padded batches.
    """

    def __init__(self, workdir: str, *, checkpoint: str = "latest", use_ema: bool | None = None,
                 batch_size: int = 16, devices: list | None = None):
        start = time.time()
        self.workdir = os.path.abspath(workdir)
        self.config = runs.load_run_config(self.workdir, checkpoint)
        self.use_ema = bool(self.config.eval.use_ema) if use_ema is None else bool(use_ema)
        self.crop_size = input_pipeline.eval_crop_size(self.config.input)
        self.resize_to = self.config.input.get("resize_to") or None
        self.threshold, self.threshold_source = runs.find_threshold(
            self.workdir, self.config.data.val_split)
        self.checkpoint = checkpoint
        self._scorer = scoring.Scorer(self.config, self.workdir, checkpoint, self.use_ema,
                                       batch_size, devices)
        self.step = self._scorer.step
        # Compile now, so the first upload is as fast as the others.
        self.score([np.zeros((self.crop_size, self.crop_size, 3), np.uint8)])
        self.explainer = None  # set by attach_explainer() when inference.explain is there
        logging.info("loaded %s (step %d) in %.1f s", self.workdir, self.step, time.time() - start)

    @property
    def name(self) -> str:
        return os.path.basename(os.path.normpath(self.workdir))

    @property
    def batch_size(self) -> int:
        return self._scorer.batch_size

    def load_view(self, path: str, face_crop: bool, info: dict | None = None):
        """(eval view, face box) of one file, exactly as predict builds it (`info` receives
        predict's upscale warning)."""
        return scoring.load_view(path, self.crop_size, self.resize_to, face_crop, info=info)

    def score(self, views: list[np.ndarray]) -> np.ndarray:
        """p_fake of each view (float64), computed in batches of `batch_size`."""
        out = [self._scorer(views[i:i + self.batch_size])
               for i in range(0, len(views), self.batch_size)]
        return np.concatenate(out) if out else np.zeros((0,), np.float64)

    def attach_explainer(self, explain) -> None:
        """Turns on heatmaps (`explain`: the deepfake_jax.inference.explain module) and compiles
        their
        jitted step (predict's, on the same weights as the scores) now, not on first use."""
        self.explainer = Explainer(explain, self.config)
        self.heatmaps([np.zeros((self.crop_size, self.crop_size, 3), np.uint8)])

    def heatmaps(self, views: list[np.ndarray]) -> np.ndarray:
        """(N, H, W) heatmaps in [0, 1] of the views, batched like `score`."""
        return np.concatenate([self._scorer.heatmaps(views[i:i + self.batch_size])
                               for i in range(0, len(views), self.batch_size)])

    def label(self, p_fake: float) -> str:
        if not math.isfinite(p_fake):  # NaN >= threshold is False: it would read "real"
            raise ValueError(f"p_fake = {p_fake} has no label")
        return "fake" if p_fake >= self.threshold else "real"

    def summary(self) -> list[tuple[str, str]]:
        return [("workdir", self.workdir),
                ("checkpoint", f"{self.checkpoint} (step {self.step}), "
                               f"{'EMA' if self.use_ema else 'raw'} weights"),
                ("threshold", f"{self.threshold:.4f} from {self.threshold_source}"),
                *config_summary(self.config)]

    def reports(self) -> list[EvalReport]:
        # Read per request: an evaluation run while the app is up shows without a restart.
        return find_eval_reports(self.workdir)


class Explainer:
    """What the page needs from `deepfake_jax.inference.explain` for one run: the method's name, the
    overlay and the region shares (the heatmaps themselves come from predict's scorer)."""

    def __init__(self, explain, config):
        self.explain = explain
        model = nnx.eval_shape(lambda: train_state.build_model(config, jax.random.key(config.seed)))
        # explain picks rollout for ViT, Grad-CAM otherwise: name it with explain's own test.
        self.method = "attention rollout" if explain._is_vit(model) else "Grad-CAM"

    def overlay(self, image: np.ndarray, heatmap: np.ndarray) -> np.ndarray:
        return self.explain.overlay(image, heatmap)

    def region_shares(self, heatmap: np.ndarray, label_map: np.ndarray) -> list[tuple]:
        """[(region, heat share, area share)], hottest region first."""
        shares = self.explain.region_shares(heatmap, label_map)
        return sorted(((k, h, a) for k, (h, a) in shares.items()), key=lambda t: -t[1])


class FaceParsing:
    """A face-parsing run (`deepfake_jax.parsing.parser.FaceParser`) and the colour overlay of
    `deepfake_jax.parsing.label_maps`, loaded once; label maps in the 19 CelebAMask-HQ classes."""

    def __init__(self, parser, label_maps, workdir: str, checkpoint: str = "latest"):
        start = time.time()
        self.workdir = os.path.abspath(workdir)
        self.parser = parser.FaceParser(self.workdir, checkpoint=checkpoint)
        self._overlay = label_maps.overlay_labels
        size = int(getattr(self.parser, "image_size", 64))
        self.parser.parse(np.zeros((1, size, size, 3), np.uint8))  # compile now
        logging.info("loaded the face parser %s in %.1f s", self.workdir, time.time() - start)

    def parse_views(self, views: list[np.ndarray]) -> np.ndarray:
        """(N, H, W) int32 label maps of same-sized uint8 RGB views."""
        return np.asarray(self.parser.parse(np.stack(views)), np.int32)

    def overlay(self, image: np.ndarray, label_map: np.ndarray) -> np.ndarray:
        return np.asarray(self._overlay(image, label_map), np.uint8)
