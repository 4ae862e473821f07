"""The train pipeline's speed-ups keep its properties (pipeline_tuning, augment's colour code)."""

import math
import os
import pickle
import platform
import sys

import grain
import numpy as np
import pytest

from deepfake_jax.data import augment, augment_ops, input_pipeline, pipeline_tuning, records


def _shuffled(n, seed):
    return pipeline_tuning.epoch_shuffle(grain.MapDataset.range(n), seed)


def test_epoch_shuffle_is_a_new_permutation_each_epoch():
    ds = _shuffled(50, seed=7)
    assert len(ds) == 50
    epochs = [[ds[e * 50 + i] % 50 for i in range(50)] for e in range(3)]
    for order in epochs:
        assert sorted(order) == list(range(50)), "each epoch shows every element once"
    assert epochs[0] != epochs[1] != epochs[2] != epochs[0], "in a new order each epoch"
    assert epochs[0] != list(range(50))


def test_epoch_shuffle_is_a_pure_function_of_seed_and_index():
    a, b, c = _shuffled(40, 1), _shuffled(40, 1), _shuffled(40, 2)
    idx = [123, 5, 79, 0, 41, 5]  # any order, out of epoch order, repeats
    assert [a[i] for i in idx] == [b[i] for i in reversed(idx)][::-1]
    assert [a[i] for i in range(40)] != [c[i] for i in range(40)]
    # pickled (grain worker processes) and with a cold cache: the same elements
    d = pickle.loads(pickle.dumps(a))
    assert [d[i] for i in range(80, 120)] == [a[i] for i in range(80, 120)]


def test_epoch_shuffle_composes_with_repeat_and_slicing():
    ds = _shuffled(10, 0).repeat(None)
    assert len(ds) > 10**9
    assert sorted(ds[i] % 10 for i in range(20, 30)) == list(range(10))  # epoch 2
    shard = ds[1::3]
    assert [shard[i] for i in range(5)] == [ds[1 + 3 * i] for i in range(5)]


def test_epoch_shuffle_errors():
    with pytest.raises(ValueError, match="seed must be in"):
        _shuffled(5, -1)
    with pytest.raises(IndexError, match="empty"):
        _shuffled(0, 0)[0]


def test_keep_freed_memory_once_per_process():
    first = pipeline_tuning.keep_freed_memory()
    if sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc":
        assert first
    assert pipeline_tuning.keep_freed_memory() == first
    assert pipeline_tuning._tuned == (os.getpid(), first)


def test_train_iterator_resumes_mid_epoch_with_the_same_augmented_batches(tiny_dataset):
    files = records.split_files(tiny_dataset, "train")
    pre = input_pipeline.Preprocess(
        28, augment=augment.AugmentSchedule(augment.AugmentPolicy.preset("strong")))
    it = input_pipeline.train_iterator(files, pre, 10, seed=5)
    for _ in range(3):
        next(it)
    state = it.get_state()
    want = [next(it) for _ in range(4)]  # crosses into the second epoch (48 examples)
    fresh = input_pipeline.train_iterator(files, pre, 10, seed=5)
    fresh.set_state(state)
    for w in want:
        got = next(fresh)
        np.testing.assert_array_equal(got["image"], w["image"])
        np.testing.assert_array_equal(got["label"], w["label"])


# ----------------------------------------------------------------------------- colour matrices
# The builders are sums of precomputed terms; these are the textbook forms they replaced.


def test_colour_matrices_match_their_definitions():
    grey = np.outer(np.ones(3), augment_ops.LUMA)
    for f in (0.0, 0.7, 1.0, 1.3):
        np.testing.assert_allclose(augment_ops.brightness_matrix(f), np.diag([f, f, f, 1.0]))
        want = np.diag([f, f, f, 1.0])
        want[:3, 3] = (1 - f) * 100.0
        np.testing.assert_allclose(augment_ops.contrast_matrix(f, 100.0), want)
        want = np.eye(4)
        want[:3, :3] = f * np.eye(3) + (1 - f) * grey
        np.testing.assert_allclose(augment_ops.saturation_matrix(f), want, atol=1e-12)
    for shift in (-0.05, 0.0, 0.2):
        m = augment_ops.hue_matrix(shift)
        np.testing.assert_allclose(m[3], [0, 0, 0, 1], atol=1e-12)
        np.testing.assert_allclose(m[:3, 3], 0, atol=1e-12)
        # luma is kept and the chroma (I, Q) plane rotates by 2 pi shift
        yiq = augment_ops._RGB_TO_YIQ @ m[:3, :3] @ augment_ops._YIQ_TO_RGB
        t = 2 * math.pi * shift
        np.testing.assert_allclose(
            yiq, [[1, 0, 0], [0, math.cos(t), -math.sin(t)], [0, math.sin(t), math.cos(t)]],
            atol=1e-9)


def test_mean_rgb_samples_block_centres():
    image = np.random.default_rng(0).integers(0, 256, (224, 200, 3), dtype=np.uint8)
    np.testing.assert_allclose(augment_ops.mean_rgb(image),
                               image[4::8, 4::8].reshape(-1, 3).mean(0))
    small = image[:5, :7]
    np.testing.assert_allclose(augment_ops.mean_rgb(small), small.reshape(-1, 3).mean(0))
    ramp = np.add.outer(np.arange(61.0), np.arange(45.0))[..., None].repeat(3, 2)
    odd = ramp.astype(np.uint8)  # sides not multiples of 8: a coarser grid, near the mean
    assert np.abs(augment_ops.mean_rgb(odd) - odd.reshape(-1, 3).mean(0)).max() < 4


def test_policy_plan_follows_the_preset_probabilities():
    policy = augment.AugmentPolicy.preset("strong", {"jpeg": {"prob": 0.3}})
    plan = {name: (prob, params) for name, prob, params in policy._plan}
    assert plan["jpeg"] == (0.3, {"quality": (30, 100)})
    assert plan["blur"] == (0.5, {"sigma": (0.0, 3.0)})
    assert [name for name, _, _ in policy._plan] == [name for name, _ in policy.ops]


# ----------------------------------------------------------------------------- faster ops


@pytest.mark.parametrize("m", [0.0, 0.04, 2.5, 5.0, 9.0, 9.99, 10.0])
def test_solarize_matches_the_lookup_table_definition(m):
    image = np.arange(256 * 3, dtype=np.uint8).reshape(16, 16, 3)  # every value
    threshold = 256 - m / 10.0 * 256
    levels = np.arange(256)
    want = np.where(levels >= threshold, 255 - levels, levels).astype(np.uint8)[image]
    np.testing.assert_array_equal(augment_ops.RANDAUGMENT_OPS["solarize"](image, m, None), want)


def test_random_erase_noise_is_uniform_and_seeded():
    image = np.zeros((200, 200, 3), np.uint8)
    rng = lambda: np.random.default_rng(11)  # noqa: E731
    a = augment_ops.random_erase(image, rng(), area=(0.2, 0.2))
    np.testing.assert_array_equal(a, augment_ops.random_erase(image, rng(), area=(0.2, 0.2)))
    patch = a[a.any(axis=2)]  # the erased pixels (nearly all nonzero)
    assert 0.19 * 200 * 200 < len(patch) <= 0.21 * 200 * 200
    assert abs(patch.mean() - 127.5) < 2 and abs(patch.std() - 73.9) < 2  # U{0..255}
    counts = np.bincount(patch.ravel(), minlength=256)
    assert counts.min() > 0.6 * counts.mean()
    other = augment_ops.random_erase(image, np.random.default_rng(12), area=(0.2, 0.2))
    assert not np.array_equal(a, other)


def test_epoch_shuffle_reads_a_data_source_like_the_dataset():
    data = [f"r{i}" for i in range(12)]  # a random-access source: len and [int]
    raw = pipeline_tuning.epoch_shuffle(data, 3)
    wrapped = pipeline_tuning.epoch_shuffle(grain.MapDataset.source(data), 3)
    assert [raw[i] for i in range(36)] == [wrapped[i] for i in range(36)]
    assert sorted(raw[i] for i in range(12, 24)) == sorted(data)
    assert list(raw.repeat(None)[30:36]) == [raw[i] for i in range(30, 36)]
