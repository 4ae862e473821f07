import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from deepfake_jax.models.layers import cpu_friendly_conv


def _lax(x, w, s, p):
    return jax.lax.conv_general_dilated(x, w, (s, s), ((p, p), (p, p)),
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))


@pytest.mark.parametrize("size,k,stride,pad", [
    (2, 3, 1, 1),   # 4 output positions: matmul path
    (4, 3, 2, 1),   # strided, 4 positions: matmul path
    (3, 1, 1, 0),   # 1x1 conv over 9 positions: matmul path
    (6, 1, 2, 0),   # strided 1x1 (ResNet's downsampling shortcut), 9 positions: matmul path
    (9, 1, 1, 0),   # 1x1 over 81 positions: matmul gradients
    (11, 1, 2, 0),  # strided 1x1, odd size, 36 positions: the same on every other pixel
    (12, 1, 2, 0),  # strided 1x1, even size
    (5, 3, 2, 0),   # no padding, odd size
    (9, 3, 1, 1),   # 81 positions: lax path
])
def test_matches_lax_conv_values_and_gradients(size, k, stride, pad):
    kx, kw = jax.random.split(jax.random.key(0))
    x = jax.random.normal(kx, (2, size, size, 5))
    w = jax.random.normal(kw, (k, k, 5, 7))
    dn = jax.lax.conv_dimension_numbers(x.shape, w.shape, ("NHWC", "HWIO", "NHWC"))
    ours = lambda x, w: cpu_friendly_conv(x, w, (stride, stride), ((pad, pad), (pad, pad)),
                                          dimension_numbers=dn)
    np.testing.assert_allclose(ours(x, w), _lax(x, w, stride, pad), atol=1e-4)
    g_ours = jax.grad(lambda x, w: jnp.sum(ours(x, w) ** 2), argnums=(0, 1))(x, w)
    g_lax = jax.grad(lambda x, w: jnp.sum(_lax(x, w, stride, pad) ** 2), argnums=(0, 1))(x, w)
    for a, b in zip(g_ours, g_lax, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-3, rtol=1e-4)


@pytest.mark.parametrize("cin,k,stride,pads", [
    (3, 3, 1, ((0, 0), (0, 0))),   # the seed CNN's first conv: shifted-sum path
    (3, 3, 1, ((1, 1), (1, 1))),   # VGG-16's
    (3, 3, 2, ((0, 1), (0, 1))),   # EfficientNet-Lite0's stem (TF SAME, stride 2)
    (1, 5, 2, ((2, 2), (1, 2))),   # one channel, odd and asymmetric
    (4, 3, 1, ((1, 1), (1, 1))),   # 36 terms: lax path
])
def test_few_channel_convs_match_lax_values_and_gradients(cin, k, stride, pads):
    kx, kw = jax.random.split(jax.random.key(1))
    x = jax.random.normal(kx, (2, 11, 10, cin))
    w = jax.random.normal(kw, (k, k, cin, 6))
    ref = lambda x, w: jax.lax.conv_general_dilated(x, w, (stride, stride), pads,
                                                    dimension_numbers=("NHWC", "HWIO", "NHWC"))
    ours = lambda x, w: cpu_friendly_conv(x, w, (stride, stride), pads,
                                          dimension_numbers=("NHWC", "HWIO", "NHWC"))
    np.testing.assert_allclose(ours(x, w), ref(x, w), rtol=1e-5, atol=1e-5)
    loss = lambda conv: lambda x, w: jnp.sum(jnp.sin(conv(x, w)))
    for a, b in zip(jax.grad(loss(ours), argnums=(0, 1))(x, w),
                    jax.grad(loss(ref), argnums=(0, 1))(x, w), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
    if cin * k * k <= 27:  # the shifted sum, not lax's convolution, computed the values
        hlo = jax.jit(ours).lower(x, w).as_text()
        assert "convolution" not in hlo


def test_works_inside_nnx_conv_with_bias():
    conv = nnx.Conv(4, 6, (3, 3), padding=((1, 1), (1, 1)), rngs=nnx.Rngs(0),
                    conv_general_dilated=cpu_friendly_conv)
    ref = nnx.Conv(4, 6, (3, 3), padding=((1, 1), (1, 1)), rngs=nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(1), (3, 2, 2, 4))
    np.testing.assert_allclose(conv(x), ref(x), atol=1e-5)


def test_neighbouring_pixel_residual():
    from deepfake_jax.models.layers import input_transform, neighbouring_pixel_residual

    rng = np.random.default_rng(0)
    small = rng.normal(size=(2, 4, 5, 3)).astype(np.float32)
    # A nearest-upsampled image is constant in 2x2 cells: its residual is exactly zero.
    upsampled = np.repeat(np.repeat(small, 2, axis=1), 2, axis=2)
    np.testing.assert_array_equal(neighbouring_pixel_residual(jnp.asarray(upsampled)), 0.0)
    x = rng.normal(size=(1, 5, 7, 3)).astype(np.float32)  # odd sizes keep their shape
    r = np.asarray(neighbouring_pixel_residual(jnp.asarray(x)))
    assert r.shape == x.shape
    np.testing.assert_allclose(r[0, 1, 3], x[0, 1, 3] - x[0, 0, 2])
    np.testing.assert_array_equal(r[:, ::2, ::2], 0.0)
    assert input_transform(None)(x) is x
    with pytest.raises(ValueError, match="valid: none, npr"):
        input_transform("fft")


@pytest.mark.parametrize("size,k,stride,pads", [
    (8, 3, 1, ((1, 1), (1, 1))),
    (8, 3, 2, ((0, 1), (0, 1))),   # TF SAME at stride 2: the odd pixel after
    (9, 5, 2, ((2, 2), (1, 2))),   # odd size, asymmetric
    (7, 5, 1, ((2, 2), (2, 2))),
])
def test_depthwise_matches_lax_values_and_gradients(size, k, stride, pads):
    c = 6
    kx, kw = jax.random.split(jax.random.key(2))
    x = jax.random.normal(kx, (2, size, size + 1, c))
    w = jax.random.normal(kw, (k, k, 1, c))
    ours = lambda x, w: cpu_friendly_conv(x, w, (stride, stride), pads, feature_group_count=c,
                                          dimension_numbers=("NHWC", "HWIO", "NHWC"))
    ref = lambda x, w: jax.lax.conv_general_dilated(
        x, w, (stride, stride), pads, dimension_numbers=("NHWC", "HWIO", "NHWC"),
        feature_group_count=c)
    np.testing.assert_allclose(ours(x, w), ref(x, w), atol=1e-5)
    g_ours = jax.grad(lambda x, w: jnp.sum(jnp.sin(ours(x, w))), argnums=(0, 1))(x, w)
    g_ref = jax.grad(lambda x, w: jnp.sum(jnp.sin(ref(x, w))), argnums=(0, 1))(x, w)
    for a, b in zip(g_ours, g_ref, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("shape", [(2, 8, 6, 3), (1, 9, 7, 2)])  # even, and odd edges dropped
def test_max_pool_2x2_matches_nnx_values_and_gradients(shape):
    from deepfake_jax.models.layers import max_pool_2x2

    x = jax.random.normal(jax.random.key(3), shape)
    ref = lambda x: nnx.max_pool(x, (2, 2), strides=(2, 2), padding="VALID")
    np.testing.assert_array_equal(max_pool_2x2(x), ref(x))

    def loss(pool):
        def f(x):
            out = pool(x)
            return jnp.sum(jnp.sin(out) * jnp.arange(1.0, 1.0 + out.size).reshape(out.shape))
        return f

    np.testing.assert_array_equal(jax.grad(loss(max_pool_2x2))(x), jax.grad(loss(ref))(x))
    # Ties (a few distinct values, and a ReLU's zeros): each window's first maximum gets it all.
    tied = jnp.round(x)
    np.testing.assert_array_equal(jax.grad(loss(max_pool_2x2))(tied), jax.grad(loss(ref))(tied))
    relu = lambda pool: lambda x: loss(pool)(jax.nn.relu(x))
    np.testing.assert_array_equal(jax.grad(relu(max_pool_2x2))(tied), jax.grad(relu(ref))(tied))
