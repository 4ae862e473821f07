"""Face-parsing losses: OHEM cross-entropy and the soft Jaccard (Lovasz-free IoU) loss."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

from deepfake_jax.parsing.classes import IGNORE_LABEL


def kth_largest_nonnegative(values: jax.Array, k: int) -> jax.Array:
    """The ``k``-th largest of a 1-D array of non-negative float32 values, exactly.

    A bisection over the float32 bit patterns (which order non-negative floats like the values
    themselves): 31 counting passes over the array. ``lax.top_k`` over a million pixels sorts
    on CPU: OHEM with it made a tiny BiSeNet's training step at 256 px 1378 ms instead of 564
    (bench/bisenet_train_step.py).
    """
    bits = jax.lax.bitcast_convert_type(values.astype(jnp.float32), jnp.int32)

    def narrow(_, bounds):  # invariant: count(bits >= lo) >= k > count(bits >= hi)
        lo, hi = bounds
        mid = lo + (hi - lo) // 2
        enough = jnp.sum(bits >= mid) >= k
        return jnp.where(enough, mid, lo), jnp.where(enough, hi, mid)

    lo, _ = jax.lax.fori_loop(0, 31, narrow, (jnp.int32(0), jnp.int32(0x7F800001)))
    return jax.lax.bitcast_convert_type(lo, jnp.float32)


def mean_of_largest(values: jax.Array, k: int) -> jax.Array:
    """Mean of the ``k`` largest non-negative values, as ``mean(top_k(values, k))``, with the
    gradient shared equally by values tied at the cut."""
    cut = jax.lax.stop_gradient(kth_largest_nonnegative(values, k))
    above = values > cut
    at = values == cut
    n_above = jnp.sum(above)
    share_at = (k - n_above) / jnp.maximum(jnp.sum(at), 1)  # how many of the ties are kept
    return (jnp.sum(jnp.where(above, values, 0.0))
            + share_at * jnp.sum(jnp.where(at, values, 0.0))) / k


def ohem_cross_entropy(logits: jax.Array, labels: jax.Array, *, thresh: float = 0.7,
                       min_kept_fraction: float = 1 / 16) -> jax.Array:
    """Online hard example mining cross-entropy (face-parsing.PyTorch's ``OhemCELoss``).

    Per-pixel CE; if more than ``n_min = min_kept_fraction * pixels`` pixels have a loss above
    ``-log(thresh)`` (the true class has probability < thresh), their mean is returned, else the
    mean of the ``n_min`` largest losses. ``IGNORE_LABEL`` pixels have no loss and are never kept.
    """
    logits = logits.astype(jnp.float32).reshape(-1, logits.shape[-1])
    labels = labels.reshape(-1)
    valid = labels != IGNORE_LABEL
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, jnp.where(valid, labels, 0))
    loss = jnp.where(valid, jnp.maximum(loss, 0.0), 0.0)  # never above the threshold
    return _ohem_mean(loss, thresh, min_kept_fraction)


def _ohem_mean(loss: jax.Array, thresh: float, min_kept_fraction: float) -> jax.Array:
    """OHEM's reduction of per-pixel losses (0 at ignored pixels); see `ohem_cross_entropy`."""
    n_min = min(max(1, int(loss.shape[0] * min_kept_fraction)), loss.shape[0] - 1)
    cut = float(-np.log(thresh))
    hard = loss > cut
    n_hard = jnp.sum(hard)
    mean_hard = jnp.sum(jnp.where(hard, loss, 0.0)) / jnp.maximum(n_hard, 1)
    # More than n_min hard pixels: their mean. Otherwise the n_min largest (only then needed).
    return jax.lax.cond(n_hard > n_min, lambda: mean_hard,
                        lambda: mean_of_largest(loss, n_min))


def soft_jaccard_loss(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """1 - the batch's soft IoU, averaged over the classes present in ``labels``.

    Not in the reference recipe: a term that weighs every class equally, as mean IoU does, so
    the thin classes (brows, lips, glasses: ~0.2% of the pixels each) count as much as the
    background. Per class c: ``I = sum(p_c * y_c)``, ``U = sum(p_c + y_c - p_c * y_c)`` over the
    valid pixels, with ``p`` the softmax and ``y`` the one-hot labels.
    """
    num_classes = logits.shape[-1]
    probs = jax.nn.softmax(logits.astype(jnp.float32).reshape(-1, num_classes), axis=-1)
    labels = labels.reshape(-1)
    valid = (labels != IGNORE_LABEL)[:, None]
    onehot = jax.nn.one_hot(jnp.where(valid[:, 0], labels, 0), num_classes) * valid
    return _soft_jaccard(probs * valid, onehot)


def _soft_jaccard(probs: jax.Array, onehot: jax.Array) -> jax.Array:
    """1 - mean soft IoU over the classes present; (pixels, classes), 0 rows where ignored."""
    inter = jnp.sum(probs * onehot, axis=0)
    union = jnp.sum(probs + onehot, axis=0) - inter
    present = jnp.sum(onehot, axis=0) > 0
    iou = jnp.where(present, inter / jnp.maximum(union, 1e-6), 0.0)
    return 1.0 - jnp.sum(iou) / jnp.maximum(jnp.sum(present), 1)


def ohem_and_soft_jaccard(logits: jax.Array, labels: jax.Array, *, thresh: float = 0.7,
                          min_kept_fraction: float = 1 / 16) -> tuple[jax.Array, jax.Array]:
    """``(ohem_cross_entropy, soft_jaccard_loss)`` of the same logits, from one log-softmax and
    one one-hot: computed apart, the two softmaxes and label lookups over every pixel cost 16%
    of the CPU recipe's training step (285 -> 238 ms, bench/bisenet_train_step.py)."""
    num_classes = logits.shape[-1]
    logits = logits.astype(jnp.float32).reshape(-1, num_classes)
    labels = labels.reshape(-1)
    valid = labels != IGNORE_LABEL
    onehot = jax.nn.one_hot(jnp.where(valid, labels, 0), num_classes) * valid[:, None]
    log_probs = jax.nn.log_softmax(logits, axis=-1)
    cross_entropy = jnp.maximum(-jnp.sum(log_probs * onehot, axis=-1), 0.0)  # 0 where ignored
    jaccard = _soft_jaccard(jnp.exp(log_probs) * valid[:, None], onehot)
    return _ohem_mean(cross_entropy, thresh, min_kept_fraction), jaccard
