"""Real/fake classification: loss, MixUp and label smoothing, train and eval steps, p_fake,
and the task the trainer runs (data, input pipeline, validation, final evaluation)."""

from __future__ import annotations

import functools
import os
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax
from absl import logging
from flax import nnx

from deepfake_jax.data import datasets, domain_mix, input_pipeline, records
from deepfake_jax.data.normalization import mean_std, normalize
from deepfake_jax.evaluation import evaluators, metrics
from deepfake_jax.models import layers
from deepfake_jax.training import checkpointing, metric_writer, sharding
from deepfake_jax.training.optim import lr_metrics
from deepfake_jax.training.train_state import TrainState, TrainStep, apply_gradients


def loss_and_scores(logits: jax.Array, labels: jax.Array, targets: jax.Array | None = None
                    ) -> tuple[jax.Array, jax.Array]:
    """Per-example loss and p_fake; one logit -> sigmoid BCE, several -> softmax CE.

    `targets` (from `soft_targets`, maybe mixed) replaces the hard `labels` in the loss.
    """
    if logits.shape[-1] == 1:
        y = labels.astype(jnp.float32) if targets is None else targets
        loss = optax.sigmoid_binary_cross_entropy(logits[..., 0], y)
    elif targets is None:
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    else:
        loss = optax.softmax_cross_entropy(logits, targets)
    return loss, p_fake_from_logits(logits)


def p_fake_from_logits(logits: jax.Array) -> jax.Array:
    """One logit -> sigmoid; several -> softmax probability of class 1 (fake)."""
    if logits.shape[-1] == 1:
        return jax.nn.sigmoid(logits[..., 0])
    return jax.nn.softmax(logits)[..., 1]


def soft_targets(labels: jax.Array, num_outputs: int, label_smoothing: float) -> jax.Array:
    """Smoothed targets: one logit -> y*(1-eps) + eps/2, shape (B,); N logits ->
    optax.smooth_labels of the one-hot labels, shape (B, N)."""
    eps = float(label_smoothing)
    if num_outputs == 1:
        return labels.astype(jnp.float32) * (1.0 - eps) + eps / 2.0
    return optax.smooth_labels(jax.nn.one_hot(labels, num_outputs), eps)


def mixup_lambda(key: jax.Array, alpha: float) -> jax.Array:
    """MixUp weight (Zhang et al. 2018) ~ Beta(alpha, alpha), folded to >= 0.5 so that the
    un-mixed example keeps the larger share (the distribution of the mix is unchanged)."""
    lam = jax.random.beta(key, alpha, alpha)
    return jnp.maximum(lam, 1.0 - lam)


def mix_batch(x: jax.Array, lam: jax.Array) -> jax.Array:
    """lam * x + (1 - lam) * x reversed along the batch (timm's pairing: a global-array
    op under jit, so the same pairs on any mesh)."""
    return lam * x + (1.0 - lam) * jnp.flip(x, axis=0)


_MIXUP_STREAM = 0x7FFFFFFF  # fold_in data for the MixUp key


def train_step(state: TrainState, batch: dict[str, jax.Array], lr_scale: jax.Array | None = None,
               *, graphdef, tx, schedule, ema_decay: float, mean, std, seed: int = 0,
               mixup_alpha: float = 0.0, label_smoothing: float = 0.0
               ) -> tuple[TrainState, dict[str, jax.Array]]:
    images = normalize(batch["image"], mean, std)
    labels = batch["label"]
    # Dropout / stochastic depth keys: a function of (seed, step) only, so a resumed run and
    # any device count draw the same masks.
    dropout_key = jax.random.fold_in(jax.random.key(seed), state.step)
    if mixup_alpha > 0:  # the same (seed, step) rule; a stream nnx.Rngs' counters never reach
        lam = mixup_lambda(jax.random.fold_in(dropout_key, _MIXUP_STREAM), mixup_alpha)
        images = mix_batch(images, lam)

    def loss_fn(params):
        model = nnx.merge(graphdef, params, state.batch_stats)
        # Built inside the differentiated function: nnx.Rngs may not cross trace levels.
        logits = model(images, train=True, rngs=nnx.Rngs(dropout=dropout_key))
        targets = None
        if mixup_alpha > 0 or label_smoothing > 0:
            targets = soft_targets(labels, logits.shape[-1], label_smoothing)
            if mixup_alpha > 0:
                targets = mix_batch(targets, lam)
        # With MixUp, `scores` are for the mixed images and the accuracy below is measured
        # against the labels of their dominant (lam >= 0.5) example.
        loss, scores = loss_and_scores(layers.fusion_boundary(logits.astype(jnp.float32)),
                                       labels, targets)
        new_batch_stats = nnx.to_pure_dict(nnx.state(model, nnx.BatchStat))
        return loss.mean(), (scores, new_batch_stats)

    (loss, (scores, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    new_state = apply_gradients(state, grads, batch_stats, tx=tx, ema_decay=ema_decay,
                                lr_scale=lr_scale)
    step_metrics = {
        "loss": loss,
        "accuracy": jnp.mean((scores >= 0.5) == (labels == records.LABEL_FAKE)),
        "grad_norm": optax.tree.norm(grads),
        **lr_metrics(schedule, state.step, lr_scale),
    }
    return new_state, step_metrics


def eval_step(state: TrainState, batch: dict[str, jax.Array], *, graphdef, use_ema: bool,
              mean, std, flip_tta: bool = False) -> jax.Array:
    params, batch_stats = ((state.ema_params, state.ema_batch_stats) if use_ema
                           else (state.params, state.batch_stats))
    model = nnx.merge(graphdef, params, batch_stats)
    return p_fake_of_images(model, batch["image"], mean, std, flip_tta)


def p_fake_of_images(model, images: jax.Array, mean, std, flip_tta: bool) -> jax.Array:
    """uint8 NHWC -> p_fake (eval mode); with `flip_tta`, the mean over the image and its
    mirror (`config.eval.flip_tta`)."""
    def p_fake(x):
        logits = model(normalize(x, mean, std), train=False).astype(jnp.float32)
        return p_fake_from_logits(layers.fusion_boundary(logits))

    if not flip_tta:
        return p_fake(images)
    return (p_fake(images) + p_fake(images[:, :, ::-1, :])) / 2


def make_eval_steps(config, mesh, graphdef, state_shardings) -> dict[bool, Any]:
    """{use_ema: jitted eval step returning p_fake, sharded like the batch}."""
    mean, std = mean_std(config.input)
    batch_sh = sharding.batch_sharding(mesh)
    return {
        use_ema: jax.jit(
            functools.partial(eval_step, graphdef=graphdef, use_ema=use_ema, mean=mean, std=std,
                              flip_tta=bool(config.eval.get("flip_tta", False))),
            in_shardings=(state_shardings, batch_sh), out_shardings=batch_sh,
        )
        for use_ema in (False, True)
    }


def make_steps(config, mesh, graphdef, tx, schedule, state_shardings):
    """Jitted train (`TrainStep`) and eval steps with explicit shardings."""
    mean, std = mean_std(config.input)
    train = TrainStep(
        functools.partial(train_step, graphdef=graphdef, tx=tx, schedule=schedule,
                          ema_decay=float(config.ema_decay), mean=mean, std=std,
                          seed=int(config.seed),
                          mixup_alpha=float(config.get("mixup_alpha", 0.0)),
                          label_smoothing=float(config.get("label_smoothing", 0.0))),
        mesh, state_shardings)
    return train, make_eval_steps(config, mesh, graphdef, state_shardings)


def check_synthetic_batch_size(config) -> None:
    """A batch larger than the generated training set, refused before generating it."""
    synth = config.data.get("synthetic")
    if not (config.data.get("dir") or config.data.get("mix") or datasets.tfds_config(config)
            ) and synth:
        num_train = 2 * int(synth.train)  # images per class
        if config.input.batch_size > num_train and not config.get("num_train_steps"):
            raise ValueError(
                f"config.input.batch_size={config.input.batch_size} is larger than the "
                f"{num_train} generated training images (config.data.synthetic.train="
                f"{synth.train} per class): lower the batch size or raise the count")


class ClassificationTask:
    """What the loop needs from a task (`config.task`): data, steps, input pipeline,
    validation summary (ranked by `best_metric`) and final evaluation (`tasks.Task`)."""

    best_metric = checkpointing.BEST_METRIC["classification"]

    def __init__(self, config: ml_collections.ConfigDict):
        self.config = config
        self.preprocess = input_pipeline.Preprocess.from_config(config.input,
                                                                config.get("augment"))
        self._val_domains: list[str] | None = None
        data = config.data
        self.eval_splits = [s for s in (data.val_split, data.get("test_split")) if s]

    def prepare_data(self, workdir: str) -> str:
        check_synthetic_batch_size(self.config)  # before the data is generated
        dataset_dir = datasets.prepare(self.config, workdir)
        # Refuses one-class train/validation data and a missing validation split now, not
        # after training; a missing test split is skipped by the final evaluation.
        self.eval_splits = datasets.check_classification_splits(self.config, dataset_dir)
        return dataset_dir

    def make_steps(self, mesh, graphdef, tx, schedule, state_shardings):
        return make_steps(self.config, mesh, graphdef, tx, schedule, state_shardings)

    def train_iterator(self, train_files: list[str]):
        config = self.config
        domains = domain_mix.domains_of(config)
        if domains:  # config.data.mix: each domain's train split, drawn with its weight
            return domain_mix.train_iterator(
                domain_mix.domain_files(domains, config.data.train_split),
                [d.weight for d in domains], self.preprocess, config.input.batch_size,
                seed=config.seed, process_index=jax.process_index(),
                process_count=jax.process_count(),
                num_workers=config.input.get("num_workers", 0))
        return input_pipeline.train_iterator(
            train_files, self.preprocess, config.input.batch_size, seed=config.seed,
            process_index=jax.process_index(), process_count=jax.process_count(),
            num_workers=config.input.get("num_workers", 0),
        )

    def validate(self, eval_fn, state, mesh, val_files: list[str]) -> dict[str, Any]:
        val = evaluators.predict_split(eval_fn, state, mesh, val_files, self.preprocess,
                                       self.config.input.eval_batch_size)
        val_m = metrics.binary_metrics(val["label"], val["p_fake"], 0.5)
        summary = {f"val_{k}": val_m[k] for k in ("roc_auc", "accuracy", "log_loss")}
        domains = domain_mix.domains_of(self.config)
        if domains:  # config.data.mix: also each domain's own AUC
            if self._val_domains is None:  # the split's record -> domain list, read once
                self._val_domains = domain_mix.record_domains(
                    val_files, domain_mix.file_domains(domains, self.config.data.val_split))
            names = self._val_domains
            aucs = domain_mix.per_domain_auc(val["label"], val["p_fake"],
                                             [names[i] for i in val["index"]])
            summary.update({f"val_roc_auc_{k}": v for k, v in aucs.items() if v is not None})
        return summary

    def _file_domains(self) -> dict[str, str] | None:
        """{shard: domain name} over the eval splits with config.data.mix, else None."""
        domains = domain_mix.domains_of(self.config)
        if not domains:
            return None
        data = self.config.data
        return {f: name for split in (data.val_split, data.test_split) if split
                for f, name in domain_mix.file_domains(domains, split).items()}

    def final_evaluation(self, eval_fn, state, mesh, dataset_dir: str, workdir: str, writer,
                         step: int) -> dict[str, Any]:
        config = self.config
        results = evaluators.evaluate_splits(
            eval_fn, state, mesh, self.preprocess, config.input.eval_batch_size,
            threshold_split=datasets.split_files(config, dataset_dir, config.data.val_split),
            splits={split: datasets.split_files(config, dataset_dir, split)
                    for split in self.eval_splits},
            out_dir=os.path.join(workdir, "eval"), threshold_method=config.eval.threshold_method,
            extra={"use_ema": bool(config.eval.use_ema), "threshold_from": config.data.val_split},
            file_domains=self._file_domains(),
        )
        for split, m in results.items():
            logging.info("final %s (threshold %.3f from %s): %s", split, m["threshold"],
                         m["threshold_from"], metric_writer.format_metrics({k: m[k] for k in (
                             "roc_auc", "accuracy", "precision", "recall", "f1", "eer",
                             "average_precision")}))
            writer.write(step, f"final_{split}", {k: v for k, v in m.items()
                                                  if isinstance(v, (int, float))})
        return results
