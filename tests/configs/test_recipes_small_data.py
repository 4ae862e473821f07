"""configs/small_data_faces.py (the small-real-data recipe and its comparisons) and the
spectrum + logistic-regression baseline of bench/spectrum_baseline.py."""

import json
import os
import sys

import numpy as np
import pytest

from configs import small_data_faces

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))), "bench"))
import spectrum_baseline  # noqa: E402


def test_recipe_variants_build_the_intended_models():
    from deepfake_jax.training import train_state

    recipe = small_data_faces.get_config()
    assert recipe.model_name == "cooccurrence" and recipe.model.variant == "spam3"
    # whole 256-px images in grey levels: never resized, residuals in whole grey levels
    assert recipe.input.resize_to is None and recipe.input.crop_size == 256
    assert tuple(recipe.input.mean) == (0, 0, 0) and recipe.input.std[0] == 1 / 255
    npr = small_data_faces.get_config("npr_resnet")
    assert npr.model.stem == "small" and npr.model.input_transform == "npr"
    assert npr.input.resize_to is None  # crops at native resolution, never resized
    cnn = small_data_faces.get_config("seed_cnn")
    assert cnn.model_name == "cnn" and cnn.model.image_size == cnn.input.crop_size
    scratch = small_data_faces.get_config("resnet18_scratch")
    assert (scratch.model.width, scratch.model.stem) == (64, "imagenet")
    for config in (recipe, npr, cnn, scratch):
        model = train_state.abstract_model(config)
        assert model is not None
    with pytest.raises(ValueError, match="unknown argument 'bogus'"):
        small_data_faces.get_config("bogus")


def test_tiny_recipe_trains_and_evaluates(tiny_dataset, tmp_path):

    from deepfake_jax import tasks
    config = small_data_faces.get_config("tiny")
    config.data.dir = tiny_dataset
    tasks.train_and_evaluate(config, str(tmp_path))
    with open(tmp_path / "eval" / "test" / "metrics.json") as f:
        test_metrics = json.load(f)
    assert 0.0 <= test_metrics["roc_auc"] <= 1.0
    assert test_metrics["confusion_matrix"] is not None


def test_radial_spectrum_puts_a_cosine_in_its_band():
    size, bins = 64, 16
    yy, xx = np.mgrid[:size, :size]
    for cycles in (4, 16, 28):  # cycles per image along x: radius cycles/size of Nyquist 0.5
        spectrum = spectrum_baseline.radial_log_spectrum(
            np.cos(2 * np.pi * cycles * xx / size), bins)
        expected_band = int(cycles / size / 0.5 * bins)
        assert int(np.argmax(spectrum)) == expected_band
    flat = spectrum_baseline.radial_log_spectrum(np.full((size, size), 3.0), bins)
    np.testing.assert_allclose(flat, 0.0, atol=1e-6)  # the mean is removed: no power at all


def test_baseline_runs_on_kfold_folders(tiny_dataset, tmp_path, capsys):
    from data_prep import folds

    folds.make_folds(tiny_dataset, str(tmp_path / "folds"), k=2, seed=0)
    assert spectrum_baseline.main(["--folds", str(tmp_path / "folds"), "--bins", "8",
                                   "--cross", tiny_dataset]) == 0
    out = capsys.readouterr().out
    assert out.count("fold ") == 2 and "roc_auc:" in out and "cross " in out
    with pytest.raises(SystemExit):
        spectrum_baseline.main(["--folds", str(tmp_path / "nothing_here")])
