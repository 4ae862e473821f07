"""Residual co-occurrence (SPAM) model: features against a numpy reference, and it learns."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from deepfake_jax import models
from deepfake_jax.models import cooccurrence


def _reference_features(image: np.ndarray, t: int) -> np.ndarray:
    """Plain numpy, one plane and direction at a time."""
    img = image.astype(np.float64)
    planes = [img[..., 0], img[..., 1], img[..., 2], img[..., 1] - img[..., 0],
              img[..., 1] - img[..., 2]]
    n = 2 * t + 1
    out = []
    for p in planes:
        counts = np.zeros(n**3)
        for arr in (p, p.T):  # horizontal, then vertical (as rows of the transpose)
            d = np.clip(np.round(arr[:, 1:] - arr[:, :-1]), -t, t).astype(int) + t
            for a, b, c in zip(d[:, :-2].ravel(), d[:, 1:-1].ravel(), d[:, 2:].ravel(),
                               strict=True):
                counts[(a * n + b) * n + c] += 1
        out.append(counts / counts.sum())
    return np.concatenate(out)


def test_features_match_numpy_reference():
    rng = np.random.default_rng(0)
    smooth = np.cumsum(rng.integers(-2, 3, (2, 12, 10, 3)), axis=2) + 128
    images = np.clip(smooth, 0, 255).astype(np.float32)
    for t in (1, 2):
        got = np.asarray(cooccurrence.cooccurrence_features(jnp.asarray(images), t))
        assert got.shape == (2, cooccurrence.num_features(t))
        for i in range(2):
            np.testing.assert_allclose(got[i], _reference_features(images[i], t), atol=1e-6)


def test_constant_image_puts_all_mass_in_the_zero_bin():
    t = 2
    feats = np.asarray(cooccurrence.cooccurrence_features(jnp.full((1, 8, 8, 3), 77.0), t))
    per_plane = feats.reshape(cooccurrence.NUM_PLANES, -1)
    zero_bin = (t * 5 + t) * 5 + t
    np.testing.assert_allclose(per_plane[:, zero_bin], 1.0)
    np.testing.assert_allclose(per_plane.sum(-1), 1.0)


def test_unknown_variant_is_named():
    with pytest.raises(ValueError, match="spam3"):
        models.create_model("cooccurrence", variant="spam9", rngs=nnx.Rngs(0))


def test_head_learns_to_separate_dithered_from_smooth_images():
    """Fakes with +-1 grey-level pixel noise vs smooth ramps: separable only by the pixel
    relations the features measure (same mean brightness)."""
    rng = np.random.default_rng(1)
    ramp = np.linspace(60, 200, 24, dtype=np.float32)
    base = np.broadcast_to(ramp[None, :, None], (24, 24, 3))
    real = np.stack([base + rng.uniform(-20, 20) for _ in range(16)])
    fake = np.stack([base + rng.uniform(-20, 20) + rng.integers(-1, 2, base.shape)
                     for _ in range(16)])
    x = jnp.asarray(np.concatenate([real, fake]), jnp.float32)
    y = jnp.asarray([0] * 16 + [1] * 16, jnp.float32)
    model = models.create_model("cooccurrence", variant="tiny", rngs=nnx.Rngs(0))
    opt = nnx.Optimizer(model, optax.adam(0.1), wrt=nnx.Param)

    @nnx.jit
    def step(model, opt):
        def loss_fn(m):
            return optax.sigmoid_binary_cross_entropy(m(x, train=True)[:, 0], y).mean()
        loss, grads = nnx.value_and_grad(loss_fn)(model)
        opt.update(model, grads)
        return loss

    for _ in range(30):
        loss = step(model, opt)
    p = jax.nn.sigmoid(model(x, train=False)[:, 0])
    assert float(loss) < 0.1
    assert np.all(np.asarray(p[:16]) < 0.5) and np.all(np.asarray(p[16:]) > 0.5)


def test_running_standardize_uses_the_statistics_of_every_batch_seen():
    rng = np.random.default_rng(2)
    data = rng.normal(3.0, 2.0, (4, 8, 5)).astype(np.float32)  # 4 batches of 8
    layer = cooccurrence.RunningStandardize(5, epsilon=0.0)
    for batch in data:
        out = layer(jnp.asarray(batch), train=True)
    flat = data.reshape(-1, 5)
    np.testing.assert_allclose(layer.mean.value, flat.mean(0), rtol=1e-5)
    np.testing.assert_allclose(layer.mean_square.value - layer.mean.value**2, flat.var(0),
                               rtol=1e-4)
    np.testing.assert_allclose(out, (data[-1] - flat.mean(0)) / flat.std(0), rtol=1e-4,
                               atol=1e-5)
    frozen = layer(jnp.asarray(data[0]), train=False)  # eval: no update
    np.testing.assert_allclose(layer.mean.value, flat.mean(0), rtol=1e-5)
    np.testing.assert_allclose(frozen, (data[0] - flat.mean(0)) / flat.std(0), rtol=1e-4,
                               atol=1e-5)
