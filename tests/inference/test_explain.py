"""Heatmaps: Grad-CAM per CNN family, attention rollout for ViT, overlays, face-region shares,
and `predict --heatmaps` (with a stand-in face parser)."""

import csv
import functools
import os
import types

import cv2
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from data_prep import synthetic
from deepfake_jax import models, predict, runs
from deepfake_jax.data import normalization
from deepfake_jax.inference import explain, scoring
from deepfake_jax.parsing import classes
from deepfake_jax.training import sharding, train_state

X = jax.random.normal(jax.random.key(0), (3, 32, 32, 3))
CNNS = {  # resnet: test_grad_cam_of_a_pooled_linear_head_is_the_class_activation_map
    "cnn": dict(variant="tiny", image_size=32),
    "vgg": dict(variant="tiny"),
    "densenet": dict(variant="tiny"),
    "xception": dict(variant="tiny"),
}


@functools.cache
def _model(name, **kw):  # shared by the tests: building costs more than explaining
    return models.create_model(name, rngs=nnx.Rngs(1), **kw)


@pytest.mark.parametrize("name", sorted(CNNS))
def test_grad_cam_every_cnn_family(name):
    model = _model(name, **CNNS[name])
    maps = np.asarray(explain.heatmaps(model, X))  # the dispatcher picks Grad-CAM
    assert maps.shape == (3, 32, 32) and maps.dtype == np.float32
    assert maps.min() >= 0.0 and maps.max() <= 1.0
    peaks = maps.max(axis=(1, 2))
    assert np.all((np.abs(peaks - 1.0) < 1e-6) | (peaks == 0.0))  # each scaled by its max
    # Examples are independent: a permuted batch gives the permuted maps.
    np.testing.assert_allclose(np.asarray(explain.grad_cam(model, X[::-1])), maps[::-1],
                               atol=1e-5)


def test_grad_cam_of_a_pooled_linear_head_is_the_class_activation_map():
    """With global average pooling and a linear head, Grad-CAM's channel weights are the head's
    weights / (h w): the map is CAM (Zhou et al. 2016), computed here without gradients."""
    model = _model("resnet", variant="tiny", stem="small")
    fmap = np.asarray(model.feature_map(X), np.float64)  # (3, 4, 4, 128)
    w = np.asarray(model.fc.kernel[...], np.float64)[:, 0]
    for target, sign in (("fake", 1.0), ("real", -1.0)):
        cam = np.maximum(sign * fmap @ w, 0.0)
        up = np.asarray(jax.image.resize(jnp.asarray(cam, jnp.float32), (3, 32, 32),
                                         "bilinear"))
        peak = up.max(axis=(1, 2), keepdims=True)
        expected = np.where(peak > 0, up / np.where(peak > 0, peak, 1), 0)
        got = np.asarray(explain.grad_cam(model, X, target=target))
        np.testing.assert_allclose(got, expected, atol=1e-5)
    np.testing.assert_array_equal(np.asarray(explain.heatmaps(model, X)),
                                  np.asarray(explain.grad_cam(model, X)))  # the dispatcher


def _rollout_reference(attentions):
    """Abnar & Zuidema's rollout, written out with numpy loops."""
    n, _, t, _ = attentions[0].shape
    out = np.zeros((n, t, t))
    for i in range(n):
        r = np.eye(t)
        for a in attentions:
            a = 0.5 * np.asarray(a[i], np.float64).mean(0) + 0.5 * np.eye(t)
            r = a @ r
        out[i] = r
    return out


def test_attention_rollout_matches_reference_and_dispatches():
    rng = np.random.default_rng(0)
    probs = [rng.random((2, 3, 5, 5)) for _ in range(3)]
    probs = [p / p.sum(-1, keepdims=True) for p in probs]
    got = np.asarray(explain.rollout_matrix([jnp.asarray(p, jnp.float32) for p in probs]))
    np.testing.assert_allclose(got, _rollout_reference(probs), atol=1e-6)
    np.testing.assert_allclose(got.sum(-1), 1.0, atol=1e-6)  # rows stay distributions

    for pool in ("cls", "gap"):
        vit = _model("vit", variant="tiny", image_size=32, pool=pool)
        maps = np.asarray(explain.attention_rollout(vit, X))
        r = _rollout_reference([np.asarray(a) for a in vit.attention_maps(X)])
        rel = r[:, 0, 1:] if pool == "cls" else r[:, 1:, 1:].mean(1)
        grid = jax.image.resize(jnp.asarray(rel.reshape(3, 4, 4), jnp.float32), (3, 32, 32),
                                "bilinear")
        expected = np.asarray(grid) / np.asarray(grid).max(axis=(1, 2), keepdims=True)
        np.testing.assert_allclose(maps, expected, atol=1e-5)
        np.testing.assert_array_equal(np.asarray(explain.heatmaps(vit, X)), maps)
    with pytest.raises(TypeError, match="not a ViT"):
        explain.attention_rollout(_model("resnet", variant="tiny", stem="small"), X)
    with pytest.raises(ValueError, match=r"\(N, H, W, C\)"):
        explain.heatmaps(vit, X[0])


def test_overlay():
    image = np.random.default_rng(0).integers(0, 256, (20, 30, 3), dtype=np.uint8)
    heat = np.zeros((10, 15), np.float32)
    heat[:, 8:] = 1.0  # right half hot (resized to the image)
    out = explain.overlay(image, heat, alpha=1.0)
    assert out.shape == (20, 30, 3) and out.dtype == np.uint8
    assert out[10, 25, 0] > 100 and out[10, 25, 2] < 30  # JET: hot = (dark) red
    assert out[10, 2, 2] > 100 and out[10, 2, 0] < 30  # cold = (dark) blue
    np.testing.assert_array_equal(explain.overlay(image, heat, alpha=0.0), image)
    with pytest.raises(ValueError, match="RGB image"):
        explain.overlay(image[..., :2], heat)
    with pytest.raises(ValueError, match="heatmap"):
        explain.overlay(image, heat[None])


def _ciplab_faces(n=3, size=48):
    rng = np.random.default_rng(7)
    faces = [synthetic.make_ciplab_fake(rng, size, 1, [1, 0, 1, 0]) for _ in range(n)]
    return [f[0] for f in faces], [f[1] for f in faces]


def test_region_shares_on_generated_label_maps():
    images, labels = _ciplab_faces()
    labels = np.stack(labels).astype(np.int32)
    assert set(np.unique(labels)) >= {0, 1, 4, 5, 10, 12, 13}  # parts the maps must hold
    names = list(explain.REGION_GROUPS)

    flat = explain.region_shares(np.ones(labels.shape[1:]), labels[0])
    assert list(flat) == names  # every class is in a group: no "unassigned"
    assert sum(h for h, _ in flat.values()) == pytest.approx(1.0, abs=1e-6)
    assert sum(a for _, a in flat.values()) == pytest.approx(1.0, abs=1e-6)
    for heat, area in flat.values():  # uniform heat: heat share == area share
        assert heat == pytest.approx(area, abs=1e-6)
    nose = labels[0] == classes.PARSING_CLASSES.index("nose")
    assert flat["nose"][1] == pytest.approx(nose.mean(), abs=1e-7)

    # All the heat on the nose -> nose gets everything; a blob on the (subject's) left eye
    # -> eyes get the largest share, far above their area share.
    region = explain.region_shares(nose.astype(np.float32), labels[0])
    assert region["nose"][0] == pytest.approx(1.0, abs=1e-6)
    eye = labels[1] == classes.PARSING_CLASSES.index("l_eye")
    ys, xs = np.nonzero(eye)
    yy, xx = np.mgrid[:labels.shape[1], :labels.shape[2]]
    blob = np.exp(-((yy - ys.mean()) ** 2 + (xx - xs.mean()) ** 2) / (2 * 1.5 ** 2))
    region = explain.region_shares(blob, labels[1])
    assert max(region, key=lambda k: region[k][0]) == "eyes"
    assert region["eyes"][0] > 3 * region["eyes"][1]

    # batched == one by one; all-zero heat gives no share to anyone
    maps = np.random.default_rng(0).random(labels.shape).astype(np.float32)
    maps[2] = 0.0
    batch = explain.region_shares(maps, labels)
    for i in range(3):
        single = explain.region_shares(maps[i], labels[i])
        for k in names:
            assert batch[k][0][i] == pytest.approx(single[k][0], abs=1e-6)
            assert batch[k][1][i] == pytest.approx(single[k][1], abs=1e-7)
    assert all(batch[k][0][2] == 0.0 for k in names)

    groups = {"eyes": ("l_eye", "r_eye")}  # the rest is reported as "unassigned"
    partial = explain.region_shares(maps[0], labels[0], groups)
    assert list(partial) == ["eyes", "unassigned"]
    assert sum(h for h, _ in partial.values()) == pytest.approx(1.0, abs=1e-5)
    with pytest.raises(ValueError, match="unknown class 'eye'"):
        explain.region_shares(maps[0], labels[0], {"eyes": ("eye",)})
    with pytest.raises(ValueError, match="same size"):
        explain.region_shares(maps[0], labels[0][:10])
    with pytest.raises(ValueError, match="outside 0..18"):
        explain.region_shares(maps[0], labels[0] + 19)


class _StandInParser:
    """The `deepfake_jax.parsing.parser.FaceParser` interface, answering with a fixed label map."""

    def __init__(self, workdir, checkpoint="latest"):
        assert checkpoint == "latest"
        self.label_map = np.load(os.path.join(workdir, "labels.npy"))

    def parse(self, images):
        assert images.dtype == np.uint8 and images.ndim == 4
        return np.broadcast_to(self.label_map, images.shape[:3]).astype(np.int32)


def test_predict_heatmaps_and_region_shares(trained_workdir, tmp_path, monkeypatch):
    workdir, _ = trained_workdir
    config = runs.load_run_config(workdir)
    size = config.input.crop_size
    src = tmp_path / "images"
    src.mkdir()
    images, labels = _ciplab_faces(n=3, size=size)
    for i, img in enumerate(images):
        cv2.imwrite(str(src / f"face{i}.png"), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
    (src / "broken.jpg").write_bytes(b"\xff\xd8\xff nothing")
    seg = tmp_path / "segrun"
    seg.mkdir()
    np.save(seg / "labels.npy", labels[0].astype(np.int32))
    stand_in = types.SimpleNamespace(FaceParser=_StandInParser)
    monkeypatch.setattr(explain, "parser", stand_in)

    out_dir = tmp_path / "heat"
    rows = scoring.predict_paths(workdir, [str(src)], batch_size=2, heatmaps_dir=str(out_dir),
                                 segmentation_workdir=str(seg))
    by = {os.path.basename(r["path"]): r for r in rows}
    assert by["broken.jpg"]["status"] == "error" and by["broken.jpg"]["heatmap"] == ""
    written = sorted(os.listdir(out_dir))
    assert written == [f"face{i}_heatmap.png" for i in range(3)]
    for i in range(3):
        r = by[f"face{i}.png"]
        assert r["heatmap"] == str(out_dir / f"face{i}_heatmap.png")
        png = cv2.imread(r["heatmap"])
        assert png.shape == (size, size, 3)
        heat = sum(r[f"heat_share_{k}"] for k in explain.REGION_GROUPS)
        area = sum(r[f"area_share_{k}"] for k in explain.REGION_GROUPS)
        assert heat == pytest.approx(1.0, abs=1e-5) or heat == 0.0
        assert area == pytest.approx(1.0, abs=1e-6)

    # The heatmaps are those of the restored model on the normalised views.
    mesh = sharding.make_mesh(None, devices=jax.devices()[:1])
    graphdef, state, _ = runs.restore_weights(config, workdir, "latest", mesh)
    model = nnx.merge(graphdef, state.ema_params, state.ema_batch_stats)
    views = np.stack([scoring.load_view(str(src / f"face{i}.png"), size, None)[0]
                      for i in range(3)])
    maps = np.asarray(explain.heatmaps(model, normalization.normalize(views, config.input.mean,
                                                              config.input.std)))
    expected = explain.region_shares(maps, np.broadcast_to(labels[0], maps.shape))
    for i in range(3):
        for k in explain.REGION_GROUPS:
            assert by[f"face{i}.png"][f"heat_share_{k}"] == pytest.approx(
                float(expected[k][0][i]), abs=1e-4)

    path = predict.write_predictions(rows, str(tmp_path / "preds.csv"))
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        header = reader.fieldnames
        written_rows = list(reader)
    assert tuple(header[:len(predict.COLUMNS)]) == predict.COLUMNS
    assert "heat_share_eyes" in header and "area_share_background" in header
    broken = next(r for r in written_rows if r["path"].endswith("broken.jpg"))
    assert broken["heat_share_eyes"] == ""

    writer = explain.HeatmapWriter(str(tmp_path / "dedupe"))
    assert [os.path.basename(writer.png_path(p)) for p in ("a/x.jpg", "b/x.png", "x")] == [
        "x_heatmap.png", "x_2_heatmap.png", "x_3_heatmap.png"]
    with pytest.raises(ValueError, match="add --heatmaps"):
        scoring.predict_paths(workdir, [str(src)], segmentation_workdir=str(seg))


def test_heatmap_writer_reads_parser_labels_at_heat_pixel_centres(tmp_path):
    # a parser at twice the heatmap's resolution: heat pixel j covers label columns 2j, 2j+1;
    # its centre falls in column 2j + 1 (odd columns are "nose"), the top-left in 2j
    from deepfake_jax.parsing.classes import PARSING_CLASSES

    class Parser:
        def parse(self, images):
            labels = np.zeros((len(images), 8, 8), np.int32)
            labels[:, :, 1::2] = PARSING_CLASSES.index("nose")
            return labels

    writer = explain.HeatmapWriter(str(tmp_path))
    writer.parser = Parser()
    heat = np.ones((1, 4, 4), np.float32)
    row, = writer(["a.png"], [np.zeros((4, 4, 3), np.uint8)], heat)
    assert row["area_share_nose"] == 1.0 and row["heat_share_nose"] == pytest.approx(1.0)
    assert os.path.exists(row["heatmap"])



def test_heatmaps_are_refused_before_any_image_for_a_model_without_one(tmp_path):
    from configs import small_cnn, small_data_faces

    # Grad-CAM
    explain.check_heatmap_support(train_state.abstract_model(small_cnn.get_config("tiny")))
    config = small_data_faces.get_config("tiny")  # the co-occurrence model: no feature map
    with pytest.raises(ValueError, match="has no heatmap"):
        explain.check_heatmap_support(train_state.abstract_model(config))
    workdir = tmp_path / "run"
    workdir.mkdir()
    (workdir / "config.json").write_text(config.to_json())
    image = tmp_path / "a.png"
    cv2.imwrite(str(image), np.zeros((32, 32, 3), np.uint8))
    with pytest.raises(ValueError, match="'cooccurrence' run .* has no heatmap: .*Grad-CAM"):
        scoring.predict_paths(str(workdir), [str(image)], heatmaps_dir=str(tmp_path / "maps"))
    assert not (tmp_path / "maps").exists()  # refused before the writer made its folder
