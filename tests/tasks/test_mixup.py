"""Label smoothing and MixUp in the train step: values by hand, limits, determinism, sharding."""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from deepfake_jax.tasks import classification
from deepfake_jax.training import sharding, train_state


def test_binary_label_smoothing_loss_by_hand():
    logits, labels, eps = jnp.array([[2.0], [-1.0], [0.5]]), jnp.array([1, 0, 0]), 0.1
    targets = classification.soft_targets(labels, 1, eps)
    np.testing.assert_allclose(targets, [0.95, 0.05, 0.05], rtol=1e-6)
    loss, scores = classification.loss_and_scores(logits, labels, targets)
    sig = lambda x: 1 / (1 + math.exp(-x))
    by_hand = [-(t * math.log(sig(x)) + (1 - t) * math.log(1 - sig(x)))
               for x, t in zip([2.0, -1.0, 0.5], [0.95, 0.05, 0.05], strict=True)]
    np.testing.assert_allclose(loss, by_hand, rtol=1e-5)
    np.testing.assert_allclose(scores, [sig(2.0), sig(-1.0), sig(0.5)], rtol=1e-6)
    hard, _ = classification.loss_and_scores(logits, labels)
    soft = classification.soft_targets(labels, 1, 0.0)
    np.testing.assert_allclose(classification.loss_and_scores(logits, labels, soft)[0], hard)


def test_multiclass_label_smoothing_loss_by_hand():
    logits, labels, eps = jnp.array([[1.0, 2.0, 0.0], [0.0, 0.0, 3.0]]), jnp.array([1, 2]), 0.3
    targets = classification.soft_targets(labels, 3, eps)
    np.testing.assert_allclose(targets, [[0.1, 0.8, 0.1], [0.1, 0.1, 0.8]], rtol=1e-6)
    loss, _ = classification.loss_and_scores(logits, labels, targets)
    log_softmax = np.asarray(logits) - np.log(np.exp(np.asarray(logits)).sum(-1, keepdims=True))
    np.testing.assert_allclose(loss, -(np.asarray(targets) * log_softmax).sum(-1), rtol=1e-5)


def test_mixup_is_a_convex_combination_with_the_reversed_batch_and_deterministic():
    x = jnp.arange(4 * 3, dtype=jnp.float32).reshape(4, 3)
    key = jax.random.fold_in(jax.random.key(0), 7)
    # eager beta: 100s of dispatches
    lambda_fn = jax.jit(classification.mixup_lambda, static_argnums=1)
    lam = lambda_fn(key, 0.4)
    assert 0.5 <= float(lam) <= 1.0
    assert float(lam) == float(lambda_fn(key, 0.4)), "same key, same lambda"
    mixed = jax.jit(classification.mix_batch)(x, lam)
    np.testing.assert_allclose(mixed, float(lam) * np.asarray(x) + (1 - float(lam)) * x[::-1],
                               rtol=1e-6)
    lo, hi = np.minimum(x, x[::-1]), np.maximum(x, x[::-1])
    assert np.all((lo - 1e-5 <= mixed) & (mixed <= hi + 1e-5))
    keys = jax.random.split(jax.random.key(0), 20)
    lams = jax.vmap(lambda k: lambda_fn(k, 1e-6))(keys)
    np.testing.assert_array_equal(lams, np.ones(20), err_msg="alpha -> 0: no mixing")


def test_mix_batch_on_8_devices_matches_numpy():
    mesh = sharding.make_mesh(devices=jax.devices())
    x = np.random.default_rng(0).normal(size=(16, 4, 4, 3)).astype(np.float32)
    xs = jax.device_put(x, sharding.batch_sharding(mesh))
    mixed = jax.jit(classification.mix_batch, out_shardings=sharding.batch_sharding(mesh))(xs, 0.7)
    np.testing.assert_allclose(mixed, 0.7 * x + 0.3 * x[::-1], rtol=1e-6, atol=1e-6)


class _Linear(nnx.Module):
    """The smallest model the train step accepts: compiles in a second, unlike a ResNet."""

    def __init__(self, rngs):
        self.dense = nnx.Linear(4 * 4 * 3, 1, rngs=rngs)

    def __call__(self, x, train=False, rngs=None):
        return self.dense(x.reshape(x.shape[0], -1))


_GRAPHDEF, _PARAMS, _BATCH_STATS = train_state._split(_Linear(nnx.Rngs(0)))
_TX = optax.sgd(0.1)


@functools.cache
def _step_fn(mixup_alpha, label_smoothing):
    return jax.jit(functools.partial(
        classification.train_step, graphdef=_GRAPHDEF, tx=_TX,
        schedule=optax.constant_schedule(0.1),
        ema_decay=0.9, mean=(0.5,) * 3, std=(0.25,) * 3, seed=0, mixup_alpha=mixup_alpha,
        label_smoothing=label_smoothing))


def _one_step(mixup_alpha, label_smoothing, step=3):
    state = train_state.TrainState(step=jnp.asarray(step, jnp.int32), params=_PARAMS,
                             batch_stats=_BATCH_STATS, opt_state=_TX.init(_PARAMS),
                             ema_params=_PARAMS, ema_batch_stats=_BATCH_STATS)
    step_fn = _step_fn(mixup_alpha, label_smoothing)
    rng = np.random.default_rng(0)
    batch = {"image": rng.integers(0, 256, (8, 4, 4, 3), dtype=np.uint8),
             "label": np.array([0, 1] * 4, np.int32)}
    state, metrics = step_fn(state, batch)
    return float(metrics["loss"]), jax.device_get(state.params)


def test_train_step_alpha_to_zero_is_no_mixup_and_the_options_change_the_loss():
    plain_loss, plain_params = _one_step(0.0, 0.0)
    tiny_alpha_loss, tiny_alpha_params = _one_step(1e-6, 0.0)
    assert tiny_alpha_loss == pytest.approx(plain_loss, abs=1e-6)
    for a, b in zip(jax.tree.leaves(plain_params), jax.tree.leaves(tiny_alpha_params),
                    strict=True):
        np.testing.assert_allclose(a, b, atol=1e-6)
    for changed in [(0.4, 0.0), (0.0, 0.2)]:
        loss = _one_step(*changed)[0]
        assert loss != pytest.approx(plain_loss, abs=1e-4), changed
        assert _one_step(*changed)[0] == loss, "deterministic for a fixed seed and step"
    assert _one_step(0.4, 0.0, step=4)[0] != _one_step(0.4, 0.0, step=3)[0], "new step, new mix"
