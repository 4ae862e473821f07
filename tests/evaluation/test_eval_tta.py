"""Mirror test-time augmentation (`config.eval.flip_tta`) in the eval step and the export."""

import jax
import numpy as np
from flax import nnx

from deepfake_jax import export, models
from deepfake_jax.data import normalization
from deepfake_jax.tasks import classification


def _model_and_images():
    model = models.create_model("cnn", variant="tiny", image_size=(24, 24), rngs=nnx.Rngs(0))
    model.eval()
    images = np.random.default_rng(0).integers(0, 256, (3, 24, 24, 3), dtype=np.uint8)
    return model, images


def test_flip_tta_is_the_mean_over_the_image_and_its_mirror():
    model, images = _model_and_images()
    mean, std = normalization.IMAGENET_MEAN, normalization.IMAGENET_STD
    plain = classification.p_fake_of_images(model, images, mean, std, False)
    mirrored = classification.p_fake_of_images(model, images[:, :, ::-1], mean, std, False)
    tta = classification.p_fake_of_images(model, images, mean, std, True)
    np.testing.assert_allclose(tta, (plain + mirrored) / 2, rtol=1e-6)
    assert np.abs(np.asarray(plain) - np.asarray(mirrored)).max() > 1e-4  # not symmetric
    # The exported artifact's function computes the same scores.
    graphdef, params, batch_stats = nnx.split(model, nnx.Param, nnx.BatchStat)
    served = jax.jit(export.serving_function(graphdef, params, batch_stats, mean, std,
                                             flip_tta=True))(images)
    np.testing.assert_allclose(served, tta, rtol=1e-5)
