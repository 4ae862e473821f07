import numpy as np
import pytest

from deepfake_jax import augment


def _image(seed=0, h=40, w=48):
    rng = np.random.default_rng(seed)
    base = np.linspace(0, 255, h * w * 3).reshape(h, w, 3)
    return np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("kind,level", [("jpeg", 30), ("blur", 2), ("resize", 0.5),
                                        ("noise", 0.05)])
def test_corruptions_keep_shape_dtype_and_change_the_image(kind, level):
    image = _image()
    out = augment.corrupt(image, kind, level, np.random.default_rng(0))
    assert out.shape == image.shape and out.dtype == np.uint8
    assert out.flags["C_CONTIGUOUS"]
    assert np.abs(out.astype(int) - image).mean() > 1.0


def test_corruption_strength_is_monotonic_and_noise_is_seeded():
    image = _image()
    err = lambda out: np.abs(out.astype(int) - image).mean()
    rng = lambda: np.random.default_rng(7)
    assert err(augment.corrupt(image, "jpeg", 95, rng())) < err(
        augment.corrupt(image, "jpeg", 30, rng()))
    assert err(augment.corrupt(image, "blur", 1, rng())) < err(
        augment.corrupt(image, "blur", 3, rng()))
    np.testing.assert_array_equal(augment.corrupt(image, "noise", 0.02, rng()),
                                  augment.corrupt(image, "noise", 0.02, rng()))
    with pytest.raises(ValueError, match="jpeg, blur, resize, noise"):
        augment.corrupt(image, "rain", 1, rng())


def test_blur_removes_a_checkerboard():
    # The generator traces detectors use are high-frequency: sigma 2 blur wipes a 2-px pattern.
    board = ((np.indices((32, 32)).sum(0) % 2) * 255).astype(np.uint8)[..., None].repeat(3, -1)
    out = augment.corrupt(board, "blur", 2, np.random.default_rng(0))
    assert out.std() < 0.05 * board.std()
