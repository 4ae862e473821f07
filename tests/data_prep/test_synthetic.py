"""Tests of the synthetic face generator (data_prep/synthetic.py)."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import cv2
import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import cross_val_predict
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from data_prep import face_renderer
from data_prep import synthetic as syn
from deepfake_jax.parsing.classes import PARSING_CLASSES


def _hashes(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


# ------------------------------------------------------------------ determinism / layouts
def test_140k_deterministic_layout_and_masks(tmp_path):
    counts = {"train": 4, "valid": 2, "test": 2}
    s1 = syn.generate_140k(str(tmp_path / "a"), counts, image_size=32, masks=True)
    syn.generate_140k(str(tmp_path / "b"), counts, image_size=32, masks=True)
    ha, hb = _hashes(tmp_path / "a"), _hashes(tmp_path / "b")
    assert ha == hb
    assert s1["total_images"] == 16 and s1["counts"]["train"] == {"real": 4, "fake": 4}
    for split, n in counts.items():
        for cls in ("real", "fake"):
            files = sorted((tmp_path / "a" / split / cls).iterdir())
            assert [f.name for f in files] == [f"{split}_{cls}_{i:05d}.jpg" for i in range(n)]
            masks = sorted((tmp_path / "a" / split / f"{cls}_masks").iterdir())
            assert [m.stem for m in masks] == [f.stem for f in files]
    img = cv2.imread(str(tmp_path / "a/train/fake/train_fake_00000.jpg"))
    assert img.shape == (32, 32, 3)
    lab = cv2.imread(str(tmp_path / "a/train/fake_masks/train_fake_00000.png"), -1)
    assert lab.shape == (32, 32) and lab.dtype == np.uint8 and lab.max() < 19

    # another seed -> other files; another count -> the shared images are unchanged
    syn.generate_140k(str(tmp_path / "c"), counts, image_size=32, seed=1)
    hc = _hashes(tmp_path / "c")
    assert all(hc[k] != ha[k] for k in hc)
    syn.generate_140k(str(tmp_path / "d"), {"train": 2}, image_size=32)
    hd = _hashes(tmp_path / "d")
    assert hd and all(hd[k] == ha[k] for k in hd)


def test_140k_workers_match_single_process(tmp_path):
    counts = {"train": 6}
    syn.generate_140k(str(tmp_path / "a"), counts, image_size=32)
    syn.generate_140k(str(tmp_path / "b"), counts, image_size=32, num_workers=2)
    assert _hashes(tmp_path / "a") == _hashes(tmp_path / "b")


def test_ciplab_layout_and_determinism(tmp_path):
    s = syn.generate_ciplab(str(tmp_path / "a"), num_real=5, num_fake=12, image_size=32, masks=True)
    syn.generate_ciplab(str(tmp_path / "b"), num_real=5, num_fake=12, image_size=32, masks=True)
    assert _hashes(tmp_path / "a") == _hashes(tmp_path / "b")
    reals = sorted(p.name for p in (tmp_path / "a/training_real").iterdir())
    assert reals == [f"real_{i:05d}.jpg" for i in range(1, 6)]
    fakes = sorted(p.name for p in (tmp_path / "a/training_fake").iterdir())
    assert len(fakes) == 12
    pat = re.compile(r"^(easy|mid|hard)_(\d{5})_([01]{4})\.jpg$")
    ids = []
    for name in fakes:
        m = pat.match(name)
        assert m, name
        assert "1" in m.group(3)
        ids.append(int(m.group(2)))
    assert sorted(ids) == list(range(1, 13))
    assert sum(s["counts"]["fake_levels"].values()) == 12
    assert len(list((tmp_path / "a/training_fake_masks").iterdir())) == 12


def test_cli_refuses_non_empty_output(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    with pytest.raises(SystemExit) as e:
        syn.main(["--output", str(out), "--train", "1", "--valid", "0", "--test", "0"])
    assert e.value.code != 0
    assert "--overwrite" in capsys.readouterr().err
    summary = syn.main(
        [
            "--output",
            str(out),
            "--train",
            "2",
            "--valid",
            "1",
            "--test",
            "0",
            "--image_size",
            "32",
            "--overwrite",
            "--noprogress",
        ]
    )
    assert summary["total_images"] == 6 and (out / "keep.txt").exists()
    assert len(list((out / "train" / "real").glob("*.jpg"))) == 2


# ------------------------------------------------------------------ faces and label maps
def test_parsing_classes():
    assert len(PARSING_CLASSES) == 19
    assert PARSING_CLASSES[:6] == ("background", "skin", "l_brow", "r_brow", "l_eye", "r_eye")
    assert PARSING_CLASSES[17:] == ("hair", "hat")


@pytest.mark.parametrize("size", [64, 128, 224, 256])
def test_render_sizes(size):
    rng = np.random.default_rng(size)
    img, lab, info = syn.render_face(rng, size)
    assert img.shape == (size, size, 3) and img.dtype == np.uint8
    assert lab.shape == (size, size) and lab.dtype == np.uint8 and lab.max() < 19
    for key in ("face", "l_eye", "r_eye", "nose", "mouth"):
        x0, y0, x1, y1 = info[key]
        assert 0 <= x0 < x1 <= size and 0 <= y0 < y1 <= size
    fake, flab = syn.make_fake(rng, size, 0.5)
    assert fake.shape == (size, size, 3) and flab.shape == (size, size)


def test_label_maps_cover_face_parts():
    C = {n: i for i, n in enumerate(PARSING_CLASSES)}
    want = ["skin", "l_eye", "r_eye", "nose", "u_lip", "l_lip", "hair", "neck"]
    present = dict.fromkeys(want, 0)
    n = 40
    for i in range(n):
        img, lab, info = syn.render_face(np.random.default_rng([5, i]), 64)
        vals = set(np.unique(lab).tolist())
        for k in want:
            present[k] += C[k] in vals
        # subject's left eye is on the image's right; its box contains it
        xl = np.nonzero(lab == C["l_eye"])[1].mean()
        xr = np.nonzero(lab == C["r_eye"])[1].mean()
        assert xl > xr
        x0, y0, x1, y1 = info["l_eye"]
        assert (lab[y0:y1, x0:x1] == C["l_eye"]).any()
        # the face is roughly centred and reasonably large
        skin = lab == C["skin"]
        assert 0.04 < skin.mean() < 0.5
    for k in want:
        assert present[k] >= 0.8 * n, (k, present[k])


def test_label_maps_are_reduced_like_the_image():
    """A pixel is labelled with its supersamples' majority class (ties: the lower id), so on a
    binary map the label is 1 exactly where the INTER_AREA-reduced image is above one half;
    the top-left supersample (cv2.INTER_NEAREST) disagrees along every boundary."""
    import cv2

    fine = (np.random.default_rng(0).random((64, 64)) < 0.5).astype(np.uint8)
    area = cv2.resize(fine.astype(np.float32), (32, 32), interpolation=cv2.INTER_AREA)
    np.testing.assert_array_equal(face_renderer.block_majority(fine, 2), area > 0.5)
    assert (cv2.resize(fine, (32, 32), interpolation=cv2.INTER_NEAREST) != (area > 0.5)).any()
    blocks = np.array([[1, 1, 2, 3, 5, 4], [1, 2, 3, 3, 4, 5]], np.uint8)
    np.testing.assert_array_equal(face_renderer.block_majority(blocks, 2), [[1, 3, 4]])
    three = np.arange(9, dtype=np.uint8).reshape(3, 3) % 2  # 5 zeros, 4 ones
    np.testing.assert_array_equal(face_renderer.block_majority(three, 3), [[0]])


def test_ciplab_fake_changes_only_edited_regions():
    rng = np.random.default_rng(3)
    base, _, info = syn.render_face(np.random.default_rng(3), 64)
    fake, _ = syn.make_ciplab_fake(rng, 64, 0, [0, 0, 0, 1])  # easy, mouth only
    diff = np.abs(fake.astype(np.float32) - base.astype(np.float32)).mean(-1)
    x0, y0, x1, y1 = info["mouth"]
    inside = diff[y0:y1, x0:x1].mean()
    top = diff[: info["l_eye"][1] - 3].mean()  # only camera noise up there
    assert inside > 2.0 * top


# ------------------------------------------------------------------ "learnable, not trivial"
def _decode_jpeg(rgb: np.ndarray, rng) -> np.ndarray:
    buf = np.frombuffer(syn.encode_jpeg(rgb, syn.jpeg_quality(rng)), np.uint8)
    return cv2.cvtColor(cv2.imdecode(buf, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


def _sample(cls: int, n: int, difficulty: float = 0.5) -> np.ndarray:
    out = []
    for i in range(n):
        rng = np.random.default_rng([123, cls, i])
        img, _ = syn.make_real(rng, 64) if cls == 0 else syn.make_fake(rng, 64, difficulty)
        out.append(_decode_jpeg(img, rng))
    return np.stack(out)


def _global_features(x: np.ndarray) -> np.ndarray:
    feats = []
    for im in x:
        px = im.reshape(-1, 3).astype(np.float64)
        lap = cv2.Laplacian(cv2.cvtColor(im, cv2.COLOR_RGB2GRAY), cv2.CV_64F).var()
        feats.append(np.r_[px.mean(0), px.std(0), np.log(lap + 1e-6)])
    return np.array(feats)


def _spectral_features(x: np.ndarray) -> np.ndarray:
    """log |FFT| of the grey high-pass residual at the period-2 / period-4 frequencies."""
    feats = []
    for im in x:
        g = cv2.cvtColor(im, cv2.COLOR_RGB2GRAY).astype(np.float32)
        r = g - cv2.blur(g, (3, 3))
        m = np.log(np.abs(np.fft.fft2(r)) + 1e-3)
        h, q = g.shape[0] // 2, g.shape[0] // 4
        idx = [(h, 0), (0, h), (h, h), (q, 0), (0, q), (q, q), (q, h), (h, q)]
        feats.append([m[i, j] - np.median(m) for i, j in idx])
    return np.array(feats)


def _cv_auc(f: np.ndarray, y: np.ndarray) -> float:
    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
    p = cross_val_predict(clf, f, y, cv=5, method="predict_proba")[:, 1]
    return float(roc_auc_score(y, p))


@pytest.fixture(scope="module")
def reals_64():
    return _sample(0, 200)


def test_global_statistics_do_not_separate_classes(reals_64):
    fakes = _sample(1, 200, 0.5)
    y = np.r_[np.zeros(200), np.ones(200)]
    auc = _cv_auc(_global_features(np.concatenate([reals_64, fakes])), y)
    # measured ~0.54 at difficulty 0.5 (0.6-0.65 at 0 and 1)
    assert auc < 0.75, auc


def test_difficulty_controls_spectral_traces(reals_64):
    y = np.r_[np.zeros(200), np.ones(200)]
    aucs = {}
    for d in (0.0, 1.0):
        fakes = _sample(1, 200, d)
        aucs[d] = _cv_auc(_spectral_features(np.concatenate([reals_64, fakes])), y)
    # measured ~0.98 at difficulty 0 and ~0.65 at difficulty 1
    assert aucs[0.0] > 0.9, aucs
    assert aucs[0.0] - aucs[1.0] > 0.15, aucs
