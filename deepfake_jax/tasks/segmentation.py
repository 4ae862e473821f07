"""Face parsing as a task of the trainer (`config.task = "segmentation"`, see `tasks.make_task`).

The loop, optimizer, EMA, sharding and checkpoints are `training`'s; this module supplies:

- data: `config.data.dir` (from `data_prep.celebamask`), or generated faces with known label
  maps (`data_prep.synthetic --masks`) converted into `<workdir>/data/arrayrecord` once;
- the train step: OHEM cross-entropy (`losses.ohem_cross_entropy`) on the main output plus
  `config.loss.aux_weight` x the same loss on each of BiSeNet's two auxiliary outputs (upsampled
  to the input as in the reference, or with `config.loss.aux_at_input_size=False` on their own
  grids against subsampled labels), plus `config.loss.jaccard_weight` x the soft-IoU loss on the
  main output (`losses.soft_jaccard_loss`; 0 = the reference recipe);
- the eval step: per-pixel argmax labels (N, H, W), sharded like the batch;
- validation (`val_miou`, which ranks checkpoints) and the final evaluation: per split,
  `<workdir>/eval/<split>/{metrics.json, confusion_matrix.png, overlays.png}`.
"""

from __future__ import annotations

import functools
import math
import os
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import tqdm
from absl import logging
from flax import nnx
from jax.experimental import multihost_utils

from deepfake_jax import json_io
from deepfake_jax.data import datasets, normalization, parsing_pipeline, records
from deepfake_jax.parsing import classes, inference, label_maps, losses, metrics
from deepfake_jax.training import checkpointing, optim, sharding, train_state

# ----------------------------------------------------------------------------- steps


def subsample_labels(labels: jax.Array, size: tuple[int, int]) -> jax.Array:
    """(N, H, W) labels on a coarser (h, w) feature grid: the pixel each feature is centred on
    (no mixing of classes, unlike an image resize). A conv with torch's symmetric padding and
    stride s centres output i on input pixel s * i (`models.bisenet.conv_grid_matrix`), so that
    is ``labels[::s, ::s]``; the cell centre ``s * i + s // 2`` would teach the auxiliary heads
    labels s/2 pixels away (4 and 8 at 1/8 and 1/16). The identity at the same size."""
    sh, sw = labels.shape[1] // size[0], labels.shape[2] // size[1]
    if sh * size[0] != labels.shape[1] or sw * size[1] != labels.shape[2]:
        raise ValueError(f"labels {labels.shape[1:]} are not a multiple of the grid {size}")
    return labels[:, ::sh, ::sw]


def train_step(state: train_state.TrainState, batch: dict[str, jax.Array],
               lr_scale: jax.Array | None = None, *, graphdef, tx, schedule,
               ema_decay: float, mean, std, aux_weight: float, ohem_thresh: float,
               ohem_min_kept: float, jaccard_weight: float = 0.0, aux_at_input_size: bool = True
               ) -> tuple[train_state.TrainState, dict[str, jax.Array]]:
    images = normalization.normalize(batch["image"], mean, std)
    labels = batch["labels"].astype(jnp.int32)
    loss_of = functools.partial(losses.ohem_cross_entropy, thresh=ohem_thresh,
                                min_kept_fraction=ohem_min_kept)

    def loss_fn(params):
        model = nnx.merge(graphdef, params, state.batch_stats)
        # BiSeNet has no stochastic layers: no dropout key
        out, aux16, aux32 = model.all_heads(images, train=True,
                                            aux_at_input_size=aux_at_input_size)
        if jaccard_weight:
            main, jaccard = losses.ohem_and_soft_jaccard(
                out, labels, thresh=ohem_thresh, min_kept_fraction=ohem_min_kept)
        else:
            main, jaccard = loss_of(out, labels), 0.0
        loss = main + aux_weight * (loss_of(aux16, subsample_labels(labels, aux16.shape[1:3]))
                                    + loss_of(aux32, subsample_labels(labels, aux32.shape[1:3])))
        loss = loss + jaccard_weight * jaccard
        new_batch_stats = nnx.to_pure_dict(nnx.state(model, nnx.BatchStat))
        return loss, (main, jnp.argmax(out, axis=-1), new_batch_stats)

    (loss, (main, pred, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state.params)
    new_state = train_state.apply_gradients(state, grads, batch_stats, tx=tx, ema_decay=ema_decay,
                                      lr_scale=lr_scale)
    valid = labels != classes.IGNORE_LABEL
    step_metrics = {
        "loss": loss,
        "main_loss": main,
        "pixel_accuracy": jnp.sum((pred == labels) & valid) / jnp.maximum(jnp.sum(valid), 1),
        "grad_norm": optax.tree.norm(grads),
        **optim.lr_metrics(schedule, state.step, lr_scale),
    }
    return new_state, step_metrics


def eval_step(state: train_state.TrainState, batch: dict[str, jax.Array], *, graphdef,
              use_ema: bool,
              mean, std, window: int | None = None, stride: int | None = None,
              flip: bool = False, scales: tuple[float, ...] = (1.0,)) -> jax.Array:
    """(N, H, W) int32 labels at the input resolution: the argmax of one pass over the whole
    image, or of probabilities averaged over `window`-pixel windows every `stride` pixels,
    and/or over the image and its mirror image, and/or over input `scales`
    (`config.eval.sliding_window`, `.flip`, `.scales`)."""
    params, batch_stats = ((state.ema_params, state.ema_batch_stats) if use_ema
                           else (state.params, state.batch_stats))
    model = nnx.merge(graphdef, params, batch_stats)
    images = normalization.normalize(batch["image"], mean, std)
    scales = tuple(scales)
    if not window and not flip and scales == (1.0,):
        return jnp.argmax(model(images, train=False), axis=-1).astype(jnp.int32)

    def probs(x):
        if window:
            return inference.sliding_window_probs(
                lambda v: model(v, train=False), x, window, stride or window)
        return jax.nn.softmax(model(x, train=False).astype(jnp.float32), axis=-1)

    probs_fn = functools.partial(inference.flip_averaged, probs) if flip else probs
    if scales != (1.0,):
        probs_fn = functools.partial(inference.multiscale_averaged, probs_fn, scales=scales)
    return jnp.argmax(probs_fn(images), axis=-1).astype(jnp.int32)


def eval_view_options(config) -> dict[str, Any]:
    """`config.eval`'s inference options for `eval_step`, checked: sliding_window (pixels,
    a multiple of 32 for BiSeNet; None = whole image), sliding_stride (default: half the
    window), flip (average with the mirror image), scales (input scales to average; default
    (1.0,), one pass at the input size)."""
    ev = config.get("eval", ml_collections.ConfigDict())
    window, stride = ev.get("sliding_window"), ev.get("sliding_stride")
    if window is not None:
        window = int(window)
        stride = int(stride) if stride is not None else max(1, window // 2)
        if window <= 0 or window % 32 or stride <= 0:
            raise ValueError(f"config.eval.sliding_window must be a positive multiple of 32 "
                             f"(BiSeNet's input rule) and config.eval.sliding_stride positive, "
                             f"got {window} and {stride}")
    scales = ev.get("scales")
    scales = (1.0,) if scales is None else scales
    try:
        scales = tuple(float(v) for v in scales)
    except (TypeError, ValueError):
        scales = ()
    if not scales or min(scales) <= 0:
        raise ValueError(f"config.eval.scales must be a non-empty list of positive input "
                         f"scales, e.g. (1.0, 1.25), got {ev.get('scales')!r}")
    return {"window": window, "stride": stride, "flip": bool(ev.get("flip", False)),
            "scales": scales}


def make_eval_steps(config, mesh, graphdef, state_shardings) -> dict[bool, Any]:
    """{use_ema: jitted eval step (state, {"image"}) -> labels, sharded like the batch}."""
    mean, std = normalization.mean_std(config.input)
    batch_sh = sharding.batch_sharding(mesh)
    return {
        use_ema: jax.jit(
            functools.partial(eval_step, graphdef=graphdef, use_ema=use_ema, mean=mean, std=std,
                              **eval_view_options(config)),
            in_shardings=(state_shardings, batch_sh), out_shardings=batch_sh)
        for use_ema in (False, True)
    }


# ----------------------------------------------------------------------------- evaluation


NUM_OVERLAYS = 8  # examples drawn in overlays.png


def predict_split(eval_fn, state, mesh, files: list[str],
                  preprocess: parsing_pipeline.SegPreprocess,
                  batch_size: int, *, num_classes: int, keep_examples: int = 0,
                  progress: str | None = None) -> dict[str, Any]:
    """Confusion matrix of a whole split (all processes take part) and, on request, the first
    `keep_examples` (image, true labels, predicted labels) by record index."""
    cm = np.zeros((num_classes, num_classes), np.int64)
    kept: dict[int, tuple] = {}
    batches = parsing_pipeline.eval_batches(files, preprocess, batch_size,
                                        process_index=jax.process_index(),
                                        process_count=jax.process_count())
    if progress and jax.process_index() == 0:
        total = math.ceil(len(parsing_pipeline.grain.sources.ArrayRecordDataSource(files))
                          / batch_size)
        batches = tqdm.tqdm(batches, desc=progress, total=total, unit="batch")
    for host_batch in batches:
        batch = sharding.host_to_global(mesh, host_batch)
        pred = eval_fn(state, {"image": batch["image"]})
        g = multihost_utils.process_allgather(
            {"pred": pred, "labels": batch["labels"], "index": batch["index"]}, tiled=True)
        labels, pred, index = (np.asarray(g["labels"]), np.asarray(g["pred"]),
                               np.asarray(g["index"]))
        cm += metrics.confusion_matrix(labels, pred, num_classes)  # padding is ignored
        wanted = np.nonzero((index >= 0) & (index < keep_examples))[0]
        if len(wanted):  # the same on every process (gathered indices): a safe collective
            images = np.asarray(multihost_utils.process_allgather(batch["image"], tiled=True))
            for k in wanted:
                kept[int(index[k])] = (images[k], labels[k], pred[k])
    return {"confusion_matrix": cm, "examples": [kept[i] for i in sorted(kept)]}


def summary_line(m: dict[str, Any]) -> str:
    face = m["mean_f1_face"]
    return (f"mIoU {m['miou']:.4f}, mean F1 (face classes) "
            f"{'-' if face is None else f'{face:.4f}'}, pixel accuracy {m['pixel_accuracy']:.4f}")


def evaluate_split(eval_fn, state, mesh, files: list[str], preprocess, batch_size: int,
                   out_dir: str, *, num_classes: int, num_overlays: int = NUM_OVERLAYS,
                   extra: dict[str, Any] | None = None, progress: str | None = None,
                   predictions: dict[str, Any] | None = None) -> dict[str, Any]:
    """Metrics of one split; writes metrics.json, confusion_matrix.png and overlays.png.
    `predictions`: `predict_split`'s result for this state and split, if already computed."""
    res = predictions or predict_split(eval_fn, state, mesh, files, preprocess, batch_size,
                                       num_classes=num_classes, keep_examples=num_overlays,
                                       progress=progress)
    cm = res["confusion_matrix"]
    class_names = classes.PARSING_CLASSES[:num_classes]
    m = metrics.segmentation_metrics(cm, class_names)
    m.update(step=int(jax.device_get(state.step)), num_images=len(
        parsing_pipeline.grain.sources.ArrayRecordDataSource(files)), **(extra or {}))
    m["confusion_matrix"] = cm.tolist()
    if jax.process_index() == 0:
        json_io.write_json(m, os.path.join(out_dir, "metrics.json"))
        metrics.plot_confusion_matrix(cm, os.path.join(out_dir, "confusion_matrix.png"),
                                           class_names=class_names)
        if res["examples"]:
            images, truths, preds = zip(*res["examples"], strict=True)
            label_maps.save_overlay_grid(list(images), list(truths), list(preds),
                                           os.path.join(out_dir, "overlays.png"))
    return m


# ----------------------------------------------------------------------------- data


def prepare_data(config, workdir: str) -> str:
    """`config.data.dir`, or generated faces + label maps converted under the workdir once."""
    data = config.data
    if data.get("dir"):
        manifest = records.read_manifest(data.dir)
        if manifest.get("task") != "segmentation":
            raise ValueError(f"config.data.dir={data.dir} is not a face-parsing dataset; "
                             "convert one with python -m data_prep.celebamask")
        return data.dir
    out_dir = os.path.join(workdir, "data", "arrayrecord")
    ready = os.path.exists(os.path.join(out_dir, records.MANIFEST_NAME))
    if jax.process_index() == 0 and not ready:
        from data_prep import celebamask, synthetic

        images_dir = os.path.join(workdir, "data", "images")
        synth = data.synthetic
        logging.info("Generating synthetic faces with label maps into %s", images_dir)
        synthetic.generate_140k(
            images_dir, counts={"train": synth.train, "valid": synth.valid, "test": synth.test},
            image_size=synth.image_size, difficulty=synth.difficulty, seed=synth.seed,
            masks=True, num_workers=synth.get("workers", 1), progress=True)
        logging.info("Converting %s to ArrayRecord in %s", images_dir, out_dir)
        celebamask.convert(images_dir, out_dir, layout="synthetic", overwrite=True,
                           show_progress=True)
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices("synthetic face-parsing data ready")
    return out_dir


# ----------------------------------------------------------------------------- the task


class SegmentationTask:
    """Face parsing for `tasks.train_and_evaluate` (see `classification.ClassificationTask`)."""

    best_metric = checkpointing.BEST_METRIC["segmentation"]

    def __init__(self, config: ml_collections.ConfigDict):
        self.config = config
        self.preprocess = parsing_pipeline.SegPreprocess.from_config(config.input)
        self.num_classes = int(config.num_classes)
        self._last_validation: tuple[int, tuple, dict] | None = None  # (step, files, result)
        self.eval_splits = [s for s in (config.data.val_split, config.data.get("test_split"))
                            if s]

    def prepare_data(self, workdir: str) -> str:
        dataset_dir = prepare_data(self.config, workdir)
        # No train or validation split: refused now; no test split: skipped at the end.
        self.eval_splits = datasets.check_splits(self.config, dataset_dir)
        return dataset_dir

    def make_steps(self, mesh, graphdef, tx, schedule, state_shardings):
        config = self.config
        mean, std = normalization.mean_std(config.input)
        loss = config.get("loss", ml_collections.ConfigDict())
        step = train_state.TrainStep(
            functools.partial(
                train_step, graphdef=graphdef, tx=tx, schedule=schedule,
                ema_decay=float(config.ema_decay), mean=mean, std=std,
                aux_weight=float(loss.get("aux_weight", 1.0)),
                ohem_thresh=float(loss.get("ohem_thresh", 0.7)),
                ohem_min_kept=float(loss.get("ohem_min_kept", 1 / 16)),
                jaccard_weight=float(loss.get("jaccard_weight", 0.0)),
                aux_at_input_size=bool(loss.get("aux_at_input_size", True))),
            mesh, state_shardings)
        return step, make_eval_steps(config, mesh, graphdef, state_shardings)

    def train_iterator(self, train_files: list[str]):
        config = self.config
        return parsing_pipeline.train_iterator(
            train_files, self.preprocess, config.input.batch_size, seed=config.seed,
            process_index=jax.process_index(), process_count=jax.process_count(),
            num_workers=config.input.get("num_workers", 0))

    def validate(self, eval_fn, state, mesh, val_files: list[str]) -> dict[str, Any]:
        res = predict_split(eval_fn, state, mesh, val_files, self.preprocess,
                            self.config.input.eval_batch_size, num_classes=self.num_classes,
                            keep_examples=NUM_OVERLAYS)
        # the final evaluation of the same state reuses this pass (slow with sliding windows)
        self._last_validation = (int(jax.device_get(state.step)), tuple(val_files), res)
        m = metrics.segmentation_metrics(res["confusion_matrix"],
                                              classes.PARSING_CLASSES[:self.num_classes])
        return {"val_miou": m["miou"], "val_mean_f1_face": m["mean_f1_face"],
                "val_pixel_accuracy": m["pixel_accuracy"]}

    def final_evaluation(self, eval_fn, state, mesh, dataset_dir: str, workdir: str, writer,
                         step: int) -> dict[str, Any]:
        config = self.config
        results = {}
        for split in self.eval_splits:
            files = records.split_files(dataset_dir, split)
            last = self._last_validation
            reuse = last is not None and last[:2] == (int(jax.device_get(state.step)),
                                                      tuple(files))
            m = evaluate_split(
                eval_fn, state, mesh, files, self.preprocess, config.input.eval_batch_size,
                os.path.join(workdir, "eval", split), num_classes=self.num_classes,
                extra={"split": split, "use_ema": bool(config.eval.use_ema)},
                predictions=last[2] if reuse else None)
            results[split] = m
            logging.info("final %s: %s", split, summary_line(m))
            writer.write(step, f"final_{split}", {
                k: m[k] for k in ("miou", "mean_f1", "mean_f1_face", "pixel_accuracy")})
        return results

