import cv2
import numpy as np
import pytest

from deepfake_jax.data import augment, augment_ops


def _image(seed=0, h=40, w=48):
    rng = np.random.default_rng(seed)
    base = np.linspace(0, 255, h * w * 3).reshape(h, w, 3)
    return np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("kind,level", [("jpeg", 30), ("blur", 2), ("resize", 0.5),
                                        ("noise", 0.05)])
def test_corruptions_keep_shape_dtype_and_change_the_image(kind, level):
    image = _image()
    out = augment_ops.corrupt(image, kind, level, np.random.default_rng(0))
    assert out.shape == image.shape and out.dtype == np.uint8
    assert out.flags["C_CONTIGUOUS"]
    assert np.abs(out.astype(int) - image).mean() > 1.0


def test_corruption_strength_is_monotonic_and_noise_is_seeded():
    image = _image()
    err = lambda out: np.abs(out.astype(int) - image).mean()
    rng = lambda: np.random.default_rng(7)
    assert err(augment_ops.corrupt(image, "jpeg", 95, rng())) < err(
        augment_ops.corrupt(image, "jpeg", 30, rng()))
    assert err(augment_ops.corrupt(image, "blur", 1, rng())) < err(
        augment_ops.corrupt(image, "blur", 3, rng()))
    np.testing.assert_array_equal(augment_ops.corrupt(image, "noise", 0.02, rng()),
                                  augment_ops.corrupt(image, "noise", 0.02, rng()))
    with pytest.raises(ValueError, match="jpeg, blur, resize, noise"):
        augment_ops.corrupt(image, "rain", 1, rng())


def test_blur_removes_a_checkerboard():
    # The generator traces detectors use are high-frequency: sigma 2 blur wipes a 2-px pattern.
    board = ((np.indices((32, 32)).sum(0) % 2) * 255).astype(np.uint8)[..., None].repeat(3, -1)
    out = augment_ops.corrupt(board, "blur", 2, np.random.default_rng(0))
    assert out.std() < 0.05 * board.std()


# ----------------------------------------------------------------------------- training ops


def _face(seed=0, size=48):
    """A smooth colour image with texture, away from 0 and 255 (no clipping in colour ops)."""
    yy, xx = np.mgrid[0:size, 0:size] / size
    base = np.stack([60 + 120 * xx, 60 + 120 * yy, 180 - 100 * xx * yy], -1)
    noise = np.random.default_rng(seed).normal(0, 8, base.shape)
    return np.clip(base + noise, 20, 235).astype(np.uint8)


def _rng(seed=0):
    return np.random.default_rng(seed)


@pytest.mark.parametrize("name", list(augment.OPS))
def test_every_op_is_uint8_same_shape_deterministic_and_pure(name):
    image = _face()
    before = image.copy()
    out = augment.apply_op(name, image, _rng(3))
    assert out.dtype == np.uint8 and out.shape == image.shape and out.flags["C_CONTIGUOUS"]
    np.testing.assert_array_equal(out, augment.apply_op(name, image, _rng(3)))
    np.testing.assert_array_equal(image, before)  # the input is not modified


@pytest.mark.parametrize("name", list(augment_ops.RANDAUGMENT_OPS))
def test_every_randaugment_op_is_uint8_same_shape_and_deterministic(name):
    image = _face()
    out = augment_ops.RANDAUGMENT_OPS[name](image, 7.0, _rng(1))
    assert out.dtype == np.uint8 and out.shape == image.shape
    np.testing.assert_array_equal(out, augment_ops.RANDAUGMENT_OPS[name](image, 7.0, _rng(1)))
    if name != "identity":
        assert not np.array_equal(out, image), f"{name} at magnitude 7 changed nothing"


def test_prob_zero_is_identity_and_prob_one_applies():
    image = _face(size=32)
    off = augment.AugmentPolicy.from_dict({op: {"prob": 0.0} for op in augment.OP_DEFAULTS})
    assert off.op_names == ()
    np.testing.assert_array_equal(off(image, _rng(), crop_size=32, flip_prob=0.0), image)
    for op in augment.OPS:
        on = augment.AugmentPolicy.from_dict({op: {"prob": 1.0}})
        assert on.op_names == (op,)
        outs = [on(image, _rng(s), crop_size=32, flip_prob=0.0) for s in range(4)]
        assert any(not np.array_equal(o, image) for o in outs), op


def test_crops_keep_pixels_and_flip_mirrors():
    image = _face()
    crop = augment_ops.random_crop(image, 20, _rng(5))
    windows = np.lib.stride_tricks.sliding_window_view(image, (20, 20, 3))[..., 0, :, :, :]
    assert (windows == crop).all(axis=(-1, -2, -3)).any(), "a crop is an exact window"
    np.testing.assert_array_equal(augment_ops.random_flip(image, _rng(), prob=1.0), image[:, ::-1])
    whole = augment_ops.random_resized_crop(image, 48, _rng(), scale=(1, 1), ratio=(1, 1))
    np.testing.assert_array_equal(whole, image)
    assert augment_ops.random_resized_crop(image, 24, _rng(), scale=(0.1, 0.5)).shape == (24, 24, 3)


def test_grayscale_has_equal_channels_and_saturation_zero_is_grey():
    image = _face()
    gray = augment_ops.to_grayscale(image)
    assert np.array_equal(gray[..., 0], gray[..., 1]) and np.array_equal(gray[..., 1],
                                                                       gray[..., 2])
    desaturated = augment_ops.adjust_saturation(image, 0.0).astype(int)
    assert np.abs(desaturated - gray).max() <= 1


def test_hue_of_grey_is_a_noop_and_a_full_turn_is_identity():
    grey = np.repeat(np.arange(256, dtype=np.uint8)[None, :, None], 3, axis=2)
    for shift in (-0.4, 0.1, 0.33):
        np.testing.assert_array_equal(augment_ops.adjust_hue(grey, shift), grey)
    image = _face()
    assert np.abs(augment_ops.adjust_hue(image, 1.0).astype(int) - image).max() <= 1
    assert np.abs(augment_ops.adjust_hue(image, 0.5).astype(int) - image).mean() > 10


def test_brightness_and_contrast_values():
    image = _face()
    half = augment_ops.adjust_brightness(image, 0.5).astype(float)
    assert np.abs(half - image * 0.5).max() <= 0.5 + 1e-9
    flat = augment_ops.adjust_contrast(image, 0.0)
    expected = (image.reshape(-1, 3).mean(0) @ augment_ops.LUMA)
    assert np.abs(flat.astype(float) - expected).max() <= 1.5  # mean of a 1/16 subsample
    np.testing.assert_array_equal(augment_ops.adjust_contrast(image, 1.0), image)


def test_fused_colour_jitter_matches_the_ops_one_by_one():
    image = _face()
    settings = {op: {"prob": 1.0} for op in augment.COLOR_OPS}
    fused = augment.AugmentPolicy.from_dict(settings)(image, _rng(9), 48, flip_prob=0.0)
    # Replay the same draws (crop: 2 integers, flip: 1, then per op: prob draw + value).
    rng = _rng(9)
    rng.integers(0, 1), rng.integers(0, 1), rng.random()
    out = image
    for op in augment.COLOR_OPS:
        rng.random()
        key, (low, high) = [(k, v) for k, v in augment.OP_DEFAULTS[op].items() if k != "prob"][0]
        out = getattr(augment_ops, f"adjust_{op}")(out, rng.uniform(low, high))
    assert np.abs(fused.astype(int) - out).max() <= 3  # rounding between ops only


def test_erasing_changes_exactly_one_rectangle():
    image = _face()
    out = augment_ops.random_erase(image, _rng(2), area=(0.1, 0.2), fill="gray")
    changed = (out != image).any(-1)
    rows, cols = np.flatnonzero(changed.any(1)), np.flatnonzero(changed.any(0))
    box = out[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    assert (box == 128).all(), "the changed pixels fill their bounding box"
    assert 0.05 * image[..., 0].size <= box[..., 0].size <= 0.25 * image[..., 0].size
    outside = np.ones_like(changed)
    outside[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1] = False
    np.testing.assert_array_equal(out[outside], image[outside])


def test_jpeg_decodes_to_the_same_size_and_quality_orders_the_error():
    image = _face(size=64)
    err = lambda q: np.abs(augment_ops.jpeg_recompress(image, q).astype(int) - image).mean()
    assert augment_ops.jpeg_recompress(image, 50).shape == image.shape
    assert err(95) < err(50) < err(10)
    out = augment.apply_op("jpeg", image, _rng(), quality=(20, 20))
    np.testing.assert_array_equal(out, augment_ops.jpeg_recompress(image, 20))
    for quality in (20, 75, 100):  # OpenCV's encoder, then the same pixels as cv2.imdecode
        ok, enc = cv2.imencode(".jpg", cv2.cvtColor(image, cv2.COLOR_RGB2BGR),
                               [cv2.IMWRITE_JPEG_QUALITY, quality])
        np.testing.assert_array_equal(augment_ops.jpeg_recompress(image, quality),
                                      cv2.imdecode(enc, cv2.IMREAD_COLOR_RGB))


def test_noise_has_the_requested_sigma_and_blur_smooths():
    grey = np.full((64, 64, 3), 128, np.uint8)
    noisy = augment_ops.add_gaussian_noise(grey, 0.04, _rng(1)).astype(float) - 128
    assert abs(noisy.mean()) < 0.3 and noisy.std() == pytest.approx(0.04 * 255, rel=0.05)
    other = augment_ops.add_gaussian_noise(grey, 0.04, _rng(2)).astype(float) - 128
    assert abs(np.corrcoef(noisy.ravel(), other.ravel())[0, 1]) < 0.05
    board = ((np.indices((32, 32)).sum(0) % 2) * 255).astype(np.uint8)[..., None].repeat(3, -1)
    assert augment_ops.fast_gaussian_blur(board, 2.0).std() < 0.05 * board.std()
    close = augment_ops.fast_gaussian_blur(_face(), 1.5).astype(int) - augment_ops.gaussian_blur(
        _face(), 1.5)
    assert np.abs(close).max() <= 2
    np.testing.assert_array_equal(augment_ops.fast_gaussian_blur(board, 0.0), board)


def test_autocontrast_stretches_each_channel_to_the_full_range():
    image = _face()
    out = augment_ops.RANDAUGMENT_OPS["autocontrast"](image, 0.0, _rng()).astype(float)
    lo, hi = image.reshape(-1, 3).min(0), image.reshape(-1, 3).max(0)
    np.testing.assert_allclose(out, np.rint((image - lo) * 255.0 / (hi - lo)), atol=0.5)
    flat = np.full((4, 4, 3), 77, np.uint8)  # nothing to stretch: unchanged
    autocontrast = augment_ops.RANDAUGMENT_OPS["autocontrast"]
    np.testing.assert_array_equal(autocontrast(flat, 0, _rng()), flat)


def test_randaugment_magnitude_zero_value_ops_are_identity_and_translate_shifts():
    image = _face()
    for name in ("solarize", "posterize", "brightness", "contrast", "color", "sharpness"):
        out = augment_ops.RANDAUGMENT_OPS[name](image, 0.0, _rng())
        assert np.abs(out.astype(int) - image).max() <= 1, name
    shifted = augment_ops.RANDAUGMENT_OPS["translate_x"](image, 5.0, _rng(0))
    shift = round(0.225 * 48)
    if np.array_equal(shifted[:, shift:], image[:, :-shift]):
        assert (shifted[:, :shift] == 128).all()
    else:  # the other direction
        np.testing.assert_array_equal(shifted[:, :-shift], image[:, shift:])


def test_presets_and_config_validation():
    light, strong = augment.AugmentPolicy.preset("light"), augment.AugmentPolicy.preset("strong")
    assert set(light.op_names) < set(strong.op_names)
    assert "resized_crop" not in strong.op_names, "no resampling by default: keep the traces"
    assert augment.AugmentPolicy.preset("none").op_names == ()
    with pytest.raises(ValueError, match="unknown augment op 'rain'"):
        augment.AugmentPolicy.from_dict({"rain": {"prob": 1}})
    with pytest.raises(ValueError, match="'jpeg': unknown setting"):
        augment.AugmentPolicy.from_dict({"jpeg": {"qualty": (1, 2)}})
    with pytest.raises(ValueError, match=r"'blur': sigma=\(3, 1\)"):
        augment.AugmentPolicy.from_dict({"blur": {"prob": 1, "sigma": (3, 1)}})
    with pytest.raises(ValueError, match="prob=1.5"):
        augment.AugmentPolicy.from_dict({"noise": {"prob": 1.5}})
    with pytest.raises(ValueError, match="unknown augment preset 'heavy'"):
        augment.AugmentSchedule.from_config({"preset": "heavy"})
    with pytest.raises(ValueError, match="strong_after_epochs"):
        augment.AugmentSchedule.from_config({"preset": "strong", "strong_after_epochs": 2})


def test_schedule_switches_exactly_at_the_configured_epoch():
    config = augment.default_config("light")
    config.strong_after_epochs = 3
    config.strong.jpeg.prob = 0.9  # a config override reaches the policy
    schedule = augment.AugmentSchedule.from_config(config)
    light, strong = augment.AugmentPolicy.preset("light"), schedule.after
    assert [schedule.policy_at(e) == light for e in range(5)] == [True] * 3 + [False] * 2
    assert dict(dict(strong.ops)["jpeg"])["prob"] == 0.9
    assert augment.AugmentSchedule.from_config({"preset": "light"}).policy_at(100) == light


def _gray_only_schedule(switch_epoch):
    strong = {op: {"prob": 0.0} for op in augment.PRESETS["strong"]} | {"grayscale": {"prob": 1}}
    return augment.AugmentSchedule.from_config(
        {"preset": "none", "strong_after_epochs": switch_epoch, "strong": strong})


def test_pipeline_switches_preset_at_the_epoch_on_every_process_and_on_resume(tiny_dataset):
    from deepfake_jax.data import input_pipeline, records

    files = records.split_files(tiny_dataset, "train")
    half_epoch = input_pipeline.num_records(files) // 2
    pre = input_pipeline.Preprocess(28, augment=_gray_only_schedule(1))
    is_gray = lambda b: bool((b["image"][..., 0] == b["image"][..., 2]).all())
    it = input_pipeline.train_iterator(files, pre, half_epoch, seed=0)
    batches = [next(it) for _ in range(2)]
    state = it.get_state()
    batches += [next(it) for _ in range(2)]
    assert [is_gray(b) for b in batches] == [False, False, True, True]
    resumed = input_pipeline.train_iterator(files, pre, half_epoch, seed=0)
    resumed.set_state(state)
    for want in batches[2:]:
        np.testing.assert_array_equal(next(resumed)["image"], want["image"])
    for p in range(2):  # two processes: each its half of the same global batches
        part = input_pipeline.train_iterator(files, pre, half_epoch, seed=0, process_index=p,
                                             process_count=2)
        assert [is_gray(next(part)) for _ in range(3)] == [False, False, True]


def test_pipeline_with_strong_preset_is_deterministic(tiny_dataset):
    from deepfake_jax.data import input_pipeline, records

    files = records.split_files(tiny_dataset, "train")
    pre = input_pipeline.Preprocess(
        28, augment=augment.AugmentSchedule.from_config({"preset": "strong"}))
    a, b = (next(input_pipeline.train_iterator(files, pre, 16, seed=1)) for _ in range(2))
    plain = next(input_pipeline.train_iterator(files, input_pipeline.Preprocess(28), 16, seed=1))
    assert a["image"].shape == (16, 28, 28, 3) and a["image"].dtype == np.uint8
    np.testing.assert_array_equal(a["image"], b["image"])
    np.testing.assert_array_equal(a["label"], plain["label"])
    assert not np.array_equal(a["image"], plain["image"])
