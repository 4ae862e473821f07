"""Face parsing: class order, CelebAMask-HQ conversion, joint augmentation, OHEM loss, metrics,
training through the shared trainer, FaceParser and the segment CLI."""

import json
import os
import subprocess
import sys

import cv2
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from deepfake_jax import runs, tasks
from deepfake_jax.data import parsing_pipeline
from deepfake_jax.parsing import classes, inference, label_maps, losses, metrics, parser
from deepfake_jax.parsing.classes import CLASS_INDEX as C
from deepfake_jax.parsing.classes import FLIP_PERMUTATION, IGNORE_LABEL, PALETTE
from deepfake_jax.training import optim


def test_class_order_is_the_generators():

    assert classes.PARSING_CLASSES == classes.PARSING_CLASSES
    assert classes.PARSING_CLASSES[:5] == ("background", "skin", "l_brow", "r_brow",
                                               "l_eye")
    assert classes.PARSING_CLASSES[-2:] == ("hair", "hat") and len(PALETTE) == 19


# ----------------------------------------------------------------------------- conversion


def _label_map(rng, size):
    """Blocks of every class, so each part mask is non-empty."""
    lab = np.zeros((size, size), np.uint8)
    cells = rng.permutation(np.arange(1, 19).repeat(2))
    side = size // 6
    for k, cls in enumerate(cells[:36]):
        r, c = divmod(k, 6)
        lab[r * side:(r + 1) * side, c * side:(c + 1) * side] = cls
    return lab


def _write_celebamask(root, index, lab, image_scale=2):
    """One CelebAMask-HQ sample: a JPEG at image_scale x the mask size, binary part PNGs."""
    img_dir, mask_dir = root / "CelebA-HQ-img", root / "CelebAMask-HQ-mask-anno" / str(
        index // 2000)
    img_dir.mkdir(parents=True, exist_ok=True)
    mask_dir.mkdir(parents=True, exist_ok=True)
    size = lab.shape[0] * image_scale
    cv2.imwrite(str(img_dir / f"{index}.jpg"), np.full((size, size, 3), 90, np.uint8))
    for cls, part in enumerate(classes.PARSING_CLASSES[1:], start=1):
        if (lab == cls).any():
            cv2.imwrite(str(mask_dir / f"{index:05d}_{part}.png"),
                        np.where(lab == cls, 255, 0).astype(np.uint8))


def _records(out_dir):
    from deepfake_jax.data import records

    manifest = records.read_manifest(str(out_dir))
    got = {}
    for split in manifest["splits"]:
        files = records.split_files(str(out_dir), split)
        for i in range(manifest["splits"][split]["num_records"]):
            image, labels, rec = parsing_pipeline.read_example(files, i)
            got[rec["path"]] = (split, image, labels)
    return manifest, got


def test_celebamask_round_trip_keeps_label_order(tmp_path):
    from data_prep import celebamask

    rng = np.random.default_rng(0)
    src = tmp_path / "celebamask"
    maps = {i: _label_map(rng, 48) for i in (0, 7, 2001, 4100)}  # mask folders 0, 1 and 2
    for i, lab in maps.items():
        _write_celebamask(src, i, lab)
    # Overlap: skin and hair both on in one pixel -> hair (the later class) wins.
    (src / "CelebAMask-HQ-mask-anno" / "0" / "00007_hair.png").unlink()
    both = np.zeros((48, 48), np.uint8)
    both[:8, :8] = 255
    skin = cv2.imread(str(src / "CelebAMask-HQ-mask-anno/0/00007_skin.png"), 0)
    cv2.imwrite(str(src / "CelebAMask-HQ-mask-anno/0/00007_skin.png"), skin | both)
    cv2.imwrite(str(src / "CelebAMask-HQ-mask-anno/0/00007_hair.png"), both)
    expected7 = maps[7].copy()
    expected7[maps[7] == C["hair"]] = 0  # the old hair blocks are in no mask now
    expected7[:8, :8] = C["hair"]
    maps[7] = expected7
    _write_celebamask(src, 9, maps[0])
    (src / "CelebA-HQ-img" / "9.jpg").write_bytes(b"\xff\xd8\xff broken")  # corrupt, has masks
    cv2.imwrite(str(src / "CelebA-HQ-img" / "12.jpg"), np.zeros((8, 8, 3), np.uint8))  # no mask

    out = tmp_path / "out"
    manifest = celebamask.convert(str(src), str(out), split_ratios="0.5,0.25,0.25",
                                  show_progress=False)
    assert manifest["layout"] == "celebamask" and manifest["task"] == "segmentation"
    assert manifest["classes"] == list(classes.PARSING_CLASSES)
    assert {s["path"].split("/")[-1] for s in manifest["skipped_files"]} == {"9.jpg", "12.jpg"}
    _, got = _records(out)
    assert len(got) == 4
    for i, lab in maps.items():
        split, image, labels = got[f"CelebA-HQ-img/{i}.jpg"]
        assert image.shape == (96, 96, 3) and labels.shape == (96, 96)  # mask resized to image
        np.testing.assert_array_equal(labels[::2, ::2], lab)
    # The split is recorded on disk and is a function of the seed only.
    rows = (out / "split.csv").read_text().splitlines()
    assert rows[0] == "path,split" and len(rows) == 5
    again = celebamask.convert(str(src), str(tmp_path / "again"), split_ratios="0.5,0.25,0.25",
                               show_progress=False)
    assert again["splits"].keys() == manifest["splits"].keys()
    assert (tmp_path / "again" / "split.csv").read_text() == (out / "split.csv").read_text()


def test_images_masks_layout_gets_a_seeded_split(tmp_path):
    from data_prep import celebamask

    rng = np.random.default_rng(1)
    (tmp_path / "src" / "images").mkdir(parents=True)
    (tmp_path / "src" / "masks").mkdir()
    maps = {}
    for i in range(10):
        maps[f"images/f{i}.png"] = lab = rng.integers(0, 19, (32, 32)).astype(np.uint8)
        cv2.imwrite(str(tmp_path / "src" / "images" / f"f{i}.png"), PALETTE[lab][..., ::-1])
        if i < 9:  # f9 has no label map: listed as skipped
            cv2.imwrite(str(tmp_path / "src" / "masks" / f"f{i}.png"), lab)
    manifest = celebamask.convert(str(tmp_path / "src"), str(tmp_path / "out"),
                                  split_ratios="0.6,0.2,0.2", split_seed=3, show_progress=False)
    assert manifest["layout"] == "images_masks" and manifest["split_source"] == "seeded"
    assert {k: v["num_records"] for k, v in manifest["splits"].items()} == {
        "train": 5, "valid": 2, "test": 2}
    assert [s["path"] for s in manifest["skipped_files"]] == ["images/f9.png"]
    _, got = _records(tmp_path / "out")
    for path, (_, image, labels) in got.items():
        np.testing.assert_array_equal(labels, maps[path])
        np.testing.assert_array_equal(image, PALETTE[maps[path]])


# ----------------------------------------------------------------------------- augmentation


def _blocky_pair(size=96):
    """An image whose colour is a function of its label (PALETTE) and the label map."""
    lab = np.zeros((size, size), np.uint8)
    lab[10:60, 20:80] = C["skin"]
    lab[20:35, 25:45] = C["r_eye"]  # image left = subject's right
    lab[20:35, 55:75] = C["l_eye"]
    lab[40:55, 40:60] = C["nose"]
    lab[60:, :] = C["cloth"]
    return PALETTE[lab], lab


@pytest.mark.parametrize("flip", [False, True])
def test_joint_augmentation_keeps_image_and_labels_aligned(flip):
    image, lab = _blocky_pair()
    p = parsing_pipeline.SegPreprocess(image_size=96, crop_size=80, scale_range=(0.6, 1.4),
                                   flip_prob=1.0 if flip else 0.0, color_jitter=0.0)
    checked = 0
    for seed in range(6):
        aug_img, aug_lab = parsing_pipeline.train_view(image, lab, np.random.default_rng(seed), p)
        assert aug_img.shape == (80, 80, 3) and aug_lab.shape == (80, 80)
        # Interior pixels (a uniform 5x5 label neighbourhood) must show their label's colour;
        # a flip turns the subject's left eye into the right one, so labels swap there.
        pad = np.pad(aug_lab.astype(np.int32), 2, constant_values=-1)
        uniform = np.ones_like(aug_lab, bool)
        for dy in range(5):
            for dx in range(5):
                uniform &= pad[dy:dy + 80, dx:dx + 80] == aug_lab
        inside = uniform & (aug_lab != IGNORE_LABEL)
        source_lab = FLIP_PERMUTATION[aug_lab] if flip else aug_lab
        colour = label_maps.colorize(source_lab)  # IGNORE_LABEL -> black, like the padding
        diff = np.abs(aug_img.astype(int) - colour.astype(int)).max(-1)
        assert inside.sum() > 1000
        assert (diff[inside] <= 2).all()
        # Padding (scale < 1) is ignored, and the ignored pixels are black.
        assert (aug_img[aug_lab == IGNORE_LABEL] == 0).all()
        checked += 1
    assert checked == 6


@pytest.mark.parametrize("scale", [0.6, 0.75, 0.9, 1.25, 1.4])
def test_resized_labels_stay_centred_on_the_image_pixels(scale):
    """Sub-pixel alignment, boundaries included: on 1-D stripes (label 1 = white) every pixel
    that is mostly white after the joint resize / crop / flip must be labelled 1 and every
    mostly-black one 0, the geometry of the image's linear and area filters. (The top-left
    rule of cv2.INTER_NEAREST mislabels a few percent of the pixels here.)"""
    columns = np.random.default_rng(0).random(96) < 0.5
    lab = np.tile(columns.astype(np.uint8), (96, 1))
    image = np.repeat(lab[..., None] * 255, 3, axis=-1).astype(np.uint8)
    for flip in (0.0, 1.0):
        p = parsing_pipeline.SegPreprocess(image_size=96, crop_size=64, scale_range=(scale, scale),
                                       flip_prob=flip, color_jitter=0.0)
        aug_img, aug_lab = parsing_pipeline.train_view(image, lab, np.random.default_rng(1), p)
        value, valid = aug_img[..., 0].astype(int), aug_lab != IGNORE_LABEL
        assert valid.sum() > 1000
        np.testing.assert_array_equal(aug_lab[valid & (value > 140)], 1)
        np.testing.assert_array_equal(aug_lab[valid & (value < 115)], 0)


def test_flip_swaps_left_and_right_classes():
    image, lab = _blocky_pair()
    _, flipped = parsing_pipeline.flip_pair(image, lab)
    assert (flipped[20:35, 96 - 45:96 - 25] == C["l_eye"]).all()  # the old r_eye block
    assert (flipped[40:55, 36:56] == C["nose"]).all()
    np.testing.assert_array_equal(FLIP_PERMUTATION[FLIP_PERMUTATION], np.arange(256))


def test_color_jitter_changes_only_the_image():
    image, lab = _blocky_pair()
    p = parsing_pipeline.SegPreprocess(image_size=96, crop_size=96, scale_range=(1.0, 1.0),
                                   flip_prob=0.0, color_jitter=0.4)
    aug_img, aug_lab = parsing_pipeline.train_view(image, lab, np.random.default_rng(3), p)
    np.testing.assert_array_equal(aug_lab, lab)
    assert np.abs(aug_img.astype(int) - image).max() > 5


# ----------------------------------------------------------------------------- loss, metrics


def _np_ohem(logits, labels, thresh, n_min):
    z = logits - logits.max(-1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
    loss = -np.take_along_axis(logp, labels[..., None], -1)[..., 0].ravel()
    loss = np.sort(loss)[::-1]
    cut = -np.log(thresh)
    return loss[loss > cut].mean() if loss[n_min] > cut else loss[:n_min].mean()


@pytest.mark.parametrize("scale", [0.1, 8.0])  # few / many pixels above the threshold
def test_ohem_matches_reference(scale):
    rng = np.random.default_rng(0)
    logits = (rng.normal(size=(2, 8, 8, 5)) * scale).astype(np.float32)
    labels = rng.integers(0, 5, (2, 8, 8))
    got = float(losses.ohem_cross_entropy(logits, labels, thresh=0.7,
                                                min_kept_fraction=1 / 16))
    assert got == pytest.approx(_np_ohem(logits, labels, 0.7, 8), rel=1e-5)


@pytest.mark.parametrize("k", [1, 7, 500, 999])
def test_mean_of_largest_equals_top_k_with_ties_and_zeros(k):
    rng = np.random.default_rng(k)
    values = np.concatenate([rng.exponential(size=600), np.zeros(300),
                             np.full(100, 0.5)]).astype(np.float32)  # ties, incl. at the cut
    rng.shuffle(values)
    assert float(losses.kth_largest_nonnegative(jnp.asarray(values), k)) == np.sort(
        values)[::-1][k - 1]
    want = np.sort(values)[::-1][:k].mean(dtype=np.float64)
    got = float(losses.mean_of_largest(jnp.asarray(values), k))
    assert got == pytest.approx(want, rel=1e-6)


def test_mean_of_largest_gradient_equals_top_k_gradient():
    values = jnp.asarray(np.random.default_rng(0).exponential(size=257), jnp.float32)  # no ties
    grad = jax.grad(lambda v: losses.mean_of_largest(v, 19))(values)
    want = jax.grad(lambda v: jnp.mean(jax.lax.top_k(v, 19)[0]))(values)
    np.testing.assert_allclose(grad, want, rtol=1e-6)


def test_soft_jaccard_matches_hand_computation():
    # class 0: I = 0.75, U = 1.25 + 1 - 0.75 = 1.5; class 1: I = 0.5, U = 0.75 + 1 - 0.5 = 1.25
    probs = np.array([[[0.75, 0.25], [0.5, 0.5], [0.9, 0.1]]])  # the third pixel is ignored
    labels = np.array([[0, 1, IGNORE_LABEL]])
    got = float(losses.soft_jaccard_loss(jnp.log(jnp.asarray(probs)), labels))
    assert got == pytest.approx(1 - (0.75 / 1.5 + 0.5 / 1.25) / 2, rel=1e-6)
    # a class absent from the labels is not averaged in; a confident right answer costs ~0
    confident = jnp.asarray(np.eye(3)[[0, 2, 2, 0]] * 30.0)[None]
    assert float(losses.soft_jaccard_loss(confident, np.array([[0, 2, 2, 0]]))) < 1e-6


@pytest.mark.parametrize("thresh", [0.7, 1e-9])  # many hard pixels / only the n_min largest
def test_fused_ohem_and_soft_jaccard_equal_the_separate_losses(thresh):
    rng = np.random.default_rng(4)
    logits = jnp.asarray(rng.standard_normal((2, 16, 16, 5)) * 3, jnp.float32)
    labels = rng.integers(0, 4, (2, 16, 16))  # class 4 absent: left out of the mean IoU
    labels[0, :3] = IGNORE_LABEL
    labels = jnp.asarray(labels)

    def separate(x):
        return (losses.ohem_cross_entropy(x, labels, thresh=thresh, min_kept_fraction=0.1),
                losses.soft_jaccard_loss(x, labels))

    def fused(x):
        return losses.ohem_and_soft_jaccard(x, labels, thresh=thresh,
                                                  min_kept_fraction=0.1)

    np.testing.assert_allclose(fused(logits), separate(logits), rtol=1e-5)
    for k in range(2):
        np.testing.assert_allclose(jax.grad(lambda x, k=k: fused(x)[k])(logits),
                                   jax.grad(lambda x, k=k: separate(x)[k])(logits), atol=1e-6)


def test_subsample_labels_takes_the_pixels_strided_convs_centre_on():
    from deepfake_jax.tasks.segmentation import subsample_labels

    labels = np.arange(2 * 8 * 4).reshape(2, 8, 4)
    got = np.asarray(subsample_labels(jnp.asarray(labels), (2, 1)))
    np.testing.assert_array_equal(got, labels[:, [0, 4]][:, :, [0]])
    # a stride-4 conv with symmetric padding reads exactly those pixels' neighbourhoods
    x = jnp.asarray(labels[..., None], jnp.float32)
    delta = jnp.zeros((3, 3, 1, 1)).at[1, 1, 0, 0].set(1.0)  # a 3x3 kernel's centre tap
    centre = jax.lax.conv_general_dilated(x, delta, (4, 4), ((1, 1), (1, 1)),
                                          dimension_numbers=("NHWC", "HWIO", "NHWC"))
    np.testing.assert_array_equal(got, np.asarray(centre[..., 0]).astype(int))
    np.testing.assert_array_equal(subsample_labels(jnp.asarray(labels), (8, 4)), labels)
    with pytest.raises(ValueError, match="not a multiple"):
        subsample_labels(jnp.asarray(labels), (3, 1))


def test_ohem_ignores_padding():
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(1, 4, 4, 3)).astype(np.float32)
    labels = rng.integers(0, 3, (1, 4, 4))
    labels_pad = labels.copy()
    labels_pad[0, 0] = IGNORE_LABEL
    full = float(losses.ohem_cross_entropy(logits[:, 1:], labels[:, 1:],
                                                 min_kept_fraction=1.0 - 1e-9))
    padded = float(losses.ohem_cross_entropy(logits, labels_pad, min_kept_fraction=0.74))
    assert padded == pytest.approx(full, rel=1e-5)  # the 12 valid pixels, nothing else


def test_miou_and_f1_match_hand_computation():
    truth = np.array([[0, 0, 1, 1],
                      [0, 2, 2, 1],
                      [IGNORE_LABEL, 0, 0, 0]])
    pred = np.array([[0, 1, 1, 1],
                     [0, 2, 1, 1],
                     [2, 0, 0, 2]])
    cm = metrics.confusion_matrix(truth, pred, num_classes=4)
    assert cm.sum() == 11  # the ignored pixel is left out
    # class 0: TP 4 (of 6 true), FP 0, FN 2 -> IoU 4/6, F1 8/10
    # class 1: TP 3 (of 3 true), FP 2       -> IoU 3/5, F1 6/8
    # class 2: TP 1 (of 2 true), FP 1, FN 1 -> IoU 1/3, F1 2/4
    # class 3: absent from the truth and never predicted -> not evaluated
    m = metrics.segmentation_metrics(cm, ("background", "a", "b", "c"))
    assert m["per_class"]["background"]["iou"] == pytest.approx(4 / 6)
    assert m["per_class"]["a"]["f1"] == pytest.approx(6 / 8)
    assert m["per_class"]["b"]["iou"] == pytest.approx(1 / 3)
    assert m["per_class"]["c"]["iou"] is None
    assert m["miou"] == pytest.approx((4 / 6 + 3 / 5 + 1 / 3) / 3)
    assert m["mean_f1"] == pytest.approx((8 / 10 + 6 / 8 + 2 / 4) / 3)
    assert m["mean_f1_face"] == pytest.approx((6 / 8 + 2 / 4) / 2)
    assert m["pixel_accuracy"] == pytest.approx(8 / 11)


# ----------------------------------------------------------------------------- inference views


def test_window_starts_cover_the_side_and_end_at_the_border():
    assert inference.window_starts(256, 128, 64) == [0, 64, 128]
    assert inference.window_starts(256, 128, 96) == [0, 96, 128]  # last one moved to fit
    assert inference.window_starts(96, 128, 64) == [0]  # the window covers the side
    with pytest.raises(ValueError, match="positive"):
        inference.window_starts(256, 128, 0)


def test_sliding_window_probs_average_each_pixels_windows():
    # logits of class 1 = the window's mean input (window-dependent), class 0 = 0
    def logits_fn(x):
        m = jnp.mean(x, axis=(1, 2, 3), keepdims=True) * jnp.ones(x.shape[:3] + (1,))
        return jnp.concatenate([jnp.zeros_like(m), m], axis=-1)

    images = np.zeros((1, 6, 4, 1), np.float32)
    images[0, :2] = 3.0  # rows 0-1 bright
    got = np.asarray(inference.sliding_window_probs(logits_fn, jnp.asarray(images), 4, 2))
    # windows (4 x 4, every 2 rows): rows 0-3 (mean 1.5) and rows 2-5 (mean 0)
    p1 = 1 / (1 + np.exp(-1.5))
    want_rows = np.array([p1, p1, (p1 + 0.5) / 2, (p1 + 0.5) / 2, 0.5, 0.5])
    np.testing.assert_allclose(got[0, :, :, 1], want_rows[:, None].repeat(4, 1), rtol=1e-6)
    np.testing.assert_allclose(got.sum(-1), 1.0, rtol=1e-6)
    # a per-pixel network gets the same answer from any window: the whole image's softmax
    pixelwise = lambda x: jnp.concatenate([x, -x], axis=-1)  # noqa: E731
    rand = jnp.asarray(np.random.default_rng(0).normal(size=(2, 8, 8, 1)), jnp.float32)
    np.testing.assert_allclose(inference.sliding_window_probs(pixelwise, rand, 4, 2),
                               jax.nn.softmax(pixelwise(rand), axis=-1), rtol=1e-5, atol=1e-6)


def test_flip_average_swaps_left_and_right_classes_back():
    # a "network" that calls every bright pixel l_eye: in the mirror image the same part
    # is the subject's other eye, so the average is half l_eye, half r_eye
    def probs_fn(x):
        return jax.nn.one_hot(jnp.where(x[..., 0] > 0, C["l_eye"], 0), 19)

    images = np.zeros((1, 4, 6, 1), np.float32)
    images[0, 1, 1] = 1.0
    got = np.asarray(inference.flip_averaged(probs_fn, jnp.asarray(images)))
    assert got[0, 1, 1, C["l_eye"]] == got[0, 1, 1, C["r_eye"]] == 0.5
    assert got[0, 1, 4, 0] == 1.0  # the mirror position stays background
    np.testing.assert_allclose(got.sum(-1), 1.0)


def test_multiscale_average_keeps_boundaries_in_place():
    # a step edge at column 32 and a pixelwise "classifier" (probability of class 1 = value):
    # resized x2 (and x0.75) and back on pixel centres, the edge stays between columns 31 and
    # 32 and the two sides stay mirror images of each other (an align_corners-style resampling
    # would move it)
    images = np.zeros((1, 32, 64, 1), np.float32)
    images[..., 32:, 0] = 1.0

    def probs_fn(x):
        return jnp.concatenate([1.0 - x, x], axis=-1)

    single = np.asarray(inference.multiscale_averaged(probs_fn, jnp.asarray(images), (1.0,)))
    np.testing.assert_array_equal(single, probs_fn(images))
    for scales in ((1.0, 2.0), (0.75, 1.0, 2.0)):
        got = np.asarray(inference.multiscale_averaged(probs_fn, jnp.asarray(images), scales))
        assert got.shape == (1, 32, 64, 2)
        np.testing.assert_allclose(got.sum(-1), 1.0, atol=1e-6)
        np.testing.assert_array_equal(got[0, 0].argmax(-1), (np.arange(64) >= 32).astype(int))
        np.testing.assert_allclose(got[0, 0, :32, 1], got[0, 0, 32:, 0][::-1], atol=1e-6)
        assert 0.0 < got[0, 0, 31, 1] < 0.5  # the edge is blurred by the resampling, not moved
    assert [inference.scaled_size(256, s) for s in (1.0, 1.25, 1.1, 0.75)] == [256, 320, 288,
                                                                                  192]
    assert inference.scaled_size(100, 0.1) == 32


def test_eval_view_options_are_checked():
    import ml_collections

    from deepfake_jax.tasks.segmentation import eval_view_options

    config = ml_collections.ConfigDict({"eval": {"sliding_window": 128, "flip": True}})
    assert eval_view_options(config) == {"window": 128, "stride": 64, "flip": True,
                                         "scales": (1.0,)}
    assert eval_view_options(ml_collections.ConfigDict({"eval": {}}))["window"] is None
    config.eval.scales = (1, 1.25)
    assert eval_view_options(config)["scales"] == (1.0, 1.25)
    for bad in ((1.0, -0.5), (), "1.25", 1.25):
        with pytest.raises(ValueError, match="config.eval.scales must be"):
            eval_view_options(ml_collections.ConfigDict({"eval": {"scales": bad}}))
    config.eval.sliding_window = 100
    with pytest.raises(ValueError, match="multiple of 32"):
        eval_view_options(config)


def test_region_boxes_use_the_largest_part():
    lab = np.zeros((20, 20), np.uint8)
    lab[2:5, 3:9] = C["l_eye"]
    lab[19, 19] = C["l_eye"]  # a stray pixel
    lab[10:12, 5:8] = C["u_lip"]
    lab[12:14, 5:9] = C["l_lip"]
    r = label_maps.region_boxes(lab)
    assert r["left_eye"] == {"box": [3, 2, 9, 5], "area": 19}
    assert r["lips"] == {"box": [5, 10, 9, 14], "area": 14}
    assert r["nose"] == {"box": None, "area": 0}


def test_poly_schedule_and_task_choice():
    import ml_collections

    from configs import bisenet_face_parsing

    opt = ml_collections.ConfigDict(dict(learning_rate=0.01, warmup_steps=10, schedule="poly",
                                         power=0.9, end_lr_factor=0.0))
    lr = optim.learning_rate_schedule(opt, 110)
    assert float(lr(5)) == pytest.approx(0.005)
    assert float(lr(10)) == pytest.approx(0.01)
    assert float(lr(60)) == pytest.approx(0.01 * 0.5 ** 0.9, rel=1e-5)
    assert float(lr(110)) == pytest.approx(0.0, abs=1e-9)
    config = bisenet_face_parsing.get_config("tiny")
    assert type(tasks.make_task(config)).__name__ == "SegmentationTask"
    config.task = "detection"
    with pytest.raises(ValueError, match="config.task='detection'"):
        tasks.make_task(config)


# ----------------------------------------------------------------------------- training, CLI


def test_training_writes_parsing_metrics_and_pictures(parsing_run):
    workdir, summary = parsing_run
    assert summary["step"] == 4
    test_m = summary["eval"]["test"]
    assert 0.0 <= test_m["miou"] <= 1.0 and test_m["num_images"] == 8
    cm = np.array(test_m["confusion_matrix"])
    assert cm.shape == (19, 19) and cm.sum() == 8 * 32 * 32
    recomputed = metrics.segmentation_metrics(cm)
    assert recomputed["miou"] == pytest.approx(test_m["miou"])
    for split in ("valid", "test"):
        out = os.path.join(workdir, "eval", split)
        with open(os.path.join(out, "metrics.json")) as f:
            assert json.load(f)["miou"] == pytest.approx(summary["eval"][split]["miou"])
        for name in ("confusion_matrix.png", "overlays.png"):
            assert os.path.getsize(os.path.join(out, name)) > 1000
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        vals = [json.loads(line) for line in f if '"val"' in line]
    assert [v["step"] for v in vals] == [4] and all("val_miou" in v for v in vals)


@pytest.fixture(scope="module")
def face_parser(parsing_run):

    return parser.FaceParser(parsing_run[0])


def test_face_parser_returns_labels_at_input_size(face_parser):
    parser = face_parser
    images = np.random.default_rng(0).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    labels = parser.parse(images)
    assert labels.shape == (3, 32, 32) and labels.dtype == np.int32
    assert labels.min() >= 0 and labels.max() < 19
    np.testing.assert_array_equal(parser.parse(images[:1]), labels[:1])  # batch-independent
    big = parser.parse(np.stack([cv2.resize(im, (96, 80)) for im in images[:2]]))
    assert big.shape == (2, 80, 96)
    with pytest.raises(ValueError, match="uint8 RGB images"):
        parser.parse(images[..., 0])


def test_segment_cli_reports_every_file(parsing_run, face_parser, tmp_path):
    from data_prep import synthetic
    from deepfake_jax import segment
    from deepfake_jax.parsing import faces

    workdir, _ = parsing_run
    folder = tmp_path / "in"
    folder.mkdir()
    for seed in range(40):  # a generated face OpenCV's detector finds (deterministic)
        face, _ = synthetic.make_real(np.random.default_rng(seed), 128)
        if faces.detect_largest_face(face) is not None:
            break
    cv2.imwrite(str(folder / "face.png"), cv2.cvtColor(face, cv2.COLOR_RGB2BGR))
    cv2.imwrite(str(folder / "wall.png"), np.full((80, 80, 3), 140, np.uint8))  # no face
    good = cv2.imencode(".jpg", face)[1].tobytes()
    (folder / "broken.jpg").write_bytes(good[:len(good) // 3])
    (folder / "notes.txt").write_text("not an image")  # not listed: not an image extension
    out = tmp_path / "out"
    # segment.main without its model restore: the session's parser is passed in.
    args = segment.build_parser().parse_args(
        ["--workdir", workdir, str(folder), str(tmp_path / "missing.jpg"), "--output", str(out),
         "--face_crop"])
    result = segment.segment_paths(args.workdir, args.inputs, args.output,
                                 face_crop=args.face_crop, parser=face_parser)
    with open(out / "summary.json") as f:
        rows = {os.path.basename(r["path"]): r for r in json.load(f)["files"]}
    assert {k: r["status"] for k, r in rows.items()} == {
        "broken.jpg": "error", "face.png": "ok", "wall.png": "no_face", "missing.jpg": "error"}
    assert "truncated" in rows["broken.jpg"]["error"]
    face_row = rows["face.png"]
    assert set(face_row["regions"]) == {"left_eye", "right_eye", "nose", "lips"}
    x0, y0, x1, y1 = face_row["face_box"]
    mask = cv2.imread(face_row["files"]["mask"])
    assert mask.shape[:2] == (y1 - y0, x1 - x0)  # labels at the face crop's size
    with open(out / "face.json") as f:
        assert json.load(f)["status"] == "ok"
    assert "4 file(s): 1 ok, 1 without a face, 2 unreadable" in segment.summary(result, str(out))


def test_evaluate_cli_hands_a_parsing_run_to_the_parsing_evaluator(parsing_run, capsys):
    from deepfake_jax import evaluate

    workdir, summary = parsing_run
    with pytest.raises(ValueError, match="not a real/fake classifier: its metrics come from "
                       "evaluate_parsing_checkpoint"):
        evaluate.evaluate_checkpoint(workdir)  # the classifier API: a clear refusal
    assert evaluate.main(["--workdir", workdir]) == 0
    with pytest.raises(SystemExit, match="--robustness: classifier-only"):
        evaluate.main(["--workdir", workdir, "--robustness"])
    assert "step 4 test: mIoU" in capsys.readouterr().out
    with open(os.path.join(workdir, "eval", "step_4", "test", "metrics.json")) as f:
        assert json.load(f)["miou"] == pytest.approx(summary["eval"]["test"]["miou"])
    # The real command line too.
    run = subprocess.run([sys.executable, "-m", "deepfake_jax.evaluate", "--workdir", workdir,
                          "--split", "valid"], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "step 4 valid: mIoU" in run.stdout


def test_halted_parsing_run_resumes_to_the_uninterrupted_result(parsing_run, tmp_path):
    import jax

    from configs import bisenet_face_parsing

    reference_dir, reference = parsing_run
    config = bisenet_face_parsing.get_config("tiny")
    config.halt_after_steps = 2
    workdir = str(tmp_path / "halted")
    halted = tasks.train_and_evaluate(config, workdir)
    assert halted["halted"] == "halt_after_steps=2" and halted["step"] == 2
    assert not os.path.exists(os.path.join(workdir, "eval"))

    config.halt_after_steps = None
    resumed = tasks.train_and_evaluate(config, workdir)
    assert resumed["step"] == reference["step"] == 4
    for split in ("valid", "test"):
        got, want = resumed["eval"][split], reference["eval"][split]
        # Same data order and state: the same predictions, pixel for pixel.
        np.testing.assert_array_equal(got["confusion_matrix"], want["confusion_matrix"])
    mesh = jax.make_mesh((8,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
    run_config = runs.load_run_config(workdir)
    _, state, _ = runs.restore_weights(run_config, workdir, "latest", mesh)
    _, ref_state, _ = runs.restore_weights(run_config, reference_dir, "latest", mesh)
    for a, b in zip(jax.tree.leaves((state.ema_params, state.ema_batch_stats)),
                    jax.tree.leaves((ref_state.ema_params, ref_state.ema_batch_stats)),
                    strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6)
