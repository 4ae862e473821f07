"""Facial landmarks: regions on generated faces, region boxes/crops, drawing, alignment, CLI.

The dlib tests need the `landmarks` extra (dlib-bin + face-recognition-models) and skip without
it. The generated faces of `data_prep.synthetic` are drawings, but dlib's HOG detector finds most
of them at 128 px, so the check is end to end: detect, predict the 68 points, and compare each
region with the generator's own 19-class label map (its eyes, nose and mouth masks).
"""

import csv
import json
import os

import cv2
import numpy as np
import pytest
from PIL import Image

from data_prep import synthetic
from deepfake_jax import landmarks as landmarks_cli
from deepfake_jax.inference import scoring
from deepfake_jax.parsing import landmarks
from deepfake_jax.parsing.classes import PARSING_CLASSES
from deepfake_jax.parsing.landmarks import FaceLandmarks

# generator classes that make each landmark region (subject's left = image right in both)
REGION_CLASSES = {"left_eye": ("l_eye",), "right_eye": ("r_eye",), "nose": ("nose",),
                  "lips": ("mouth", "u_lip", "l_lip")}
SEEDS = range(8)  # fixed, not hand-picked: the test asserts rates, not every face
SIZE = 128


@pytest.fixture(scope="module")
def dlib_backend():
    try:
        return landmarks.get_backend("dlib")
    except landmarks.LandmarkBackendError as e:
        pytest.skip(f"dlib backend unavailable (pip install 'deepfake_jax[landmarks]'): {e}")


@pytest.fixture(scope="module")
def generated():
    """(rgb, label map) of synthetic faces, rendered without camera noise."""
    return [synthetic.render_face(np.random.default_rng(s), SIZE)[:2] for s in SEEDS]


def _face(regions: dict, image_shape=(100, 100)) -> FaceLandmarks:
    """A 68-point face with the given region points; the other points (jaw, brows) sit on the
    first nose point."""
    pts = np.tile(np.asarray(regions["nose"], np.float32)[:1], (68, 1))
    for name, idx in landmarks.DLIB_REGIONS.items():
        pts[list(idx)] = regions[name]
    box = landmarks.region_box(pts, image_shape, 0.0)
    return FaceLandmarks(box, pts, dict(landmarks.DLIB_REGIONS), None, "test")


def _eye_face(left, right):
    """A face whose eye contours are rings of radius 3 around the given centres."""
    ring = np.stack([np.cos(np.arange(6) * np.pi / 3), np.sin(np.arange(6) * np.pi / 3)], 1) * 3
    return _face({"left_eye": np.add(left, ring), "right_eye": np.add(right, ring),
                  "nose": np.tile([50, 55], (9, 1)), "lips": np.tile([50, 70], (20, 1))})


# ----------------------------------------------------------------------------- dlib backend


def test_dlib_finds_the_regions_of_generated_faces(dlib_backend, generated):
    found, inside, checks = 0, 0, 0
    for rgb, lab in generated:
        faces = dlib_backend.detect(rgb)
        assert len(faces) <= 1
        if not faces:
            continue
        found += 1
        face = faces[0]
        assert face.points.shape == (68, 2) and set(face.regions) == set(landmarks.REGIONS)
        left, right = face.eye_centres()
        assert left[0] > right[0]  # the subject's left eye is on the image's right
        for name, region_classes in REGION_CLASSES.items():
            mask = np.isin(lab, [PARSING_CLASSES.index(c) for c in region_classes])
            mask = cv2.dilate(mask.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
            cx, cy = np.round(face.region_points(name).mean(0)).astype(int)
            inside += bool(mask[cy, cx])
            checks += 1
            x, y, w, h = face.region_box(name, rgb.shape)
            ys, xs = np.nonzero(mask)  # the box overlaps the generator's region
            assert np.any((xs >= x) & (xs < x + w) & (ys >= y) & (ys < y + h)), name
    assert found >= len(generated) - 1, f"HOG found {found} of {len(generated)} faces"
    assert inside >= 0.9 * checks, f"{inside} of {checks} region centres inside their mask"


def test_dlib_on_a_camera_image_and_in_a_given_box(dlib_backend, generated):
    rgb, _ = generated[0]
    noisy, _ = synthetic.make_real(np.random.default_rng(0), SIZE)  # noise, blur, JPEG
    assert np.array_equal(synthetic.render_face(np.random.default_rng(0), SIZE)[0], rgb)
    assert len(dlib_backend.detect(noisy)) == 1
    face = dlib_backend.detect(rgb)[0]
    again = dlib_backend.landmarks_in_box(rgb, face.box)
    assert np.abs(again.points - face.points).max() <= 1.0  # same box -> same points
    assert dlib_backend.detect(np.full((96, 96, 3), 128, np.uint8)) == []
    with pytest.raises(ValueError, match="uint8"):
        dlib_backend.detect(rgb.astype(np.float32))


def test_align_moves_the_detected_eyes_to_the_canonical_spots(dlib_backend, generated):
    rgb, _ = generated[1]
    face = dlib_backend.detect(rgb)[0]
    size = 160
    aligned = landmarks.align_face(rgb, face, size)
    assert aligned.shape == (size, size, 3) and aligned.dtype == np.uint8
    m = landmarks.alignment_matrix(face, size)
    for name, (fx, fy) in landmarks.CANONICAL_EYES.items():
        centre = face.region_points(name).mean(0)
        np.testing.assert_allclose(m[:, :2] @ centre + m[:, 2], (fx * size, fy * size),
                                   atol=1e-3)
    # End to end: the landmarks of the aligned image put the eyes where they were sent.
    again = dlib_backend.detect(aligned)
    assert len(again) == 1
    for name, (fx, fy) in landmarks.CANONICAL_EYES.items():
        err = np.abs(again[0].region_points(name).mean(0) - (fx * size, fy * size)).max()
        assert err <= 2.0, (name, err)


# ----------------------------------------------------------------------------- geometry


def test_region_boxes_contain_their_points_and_crops_match():
    rng = np.random.default_rng(0)
    shape = (90, 120, 3)
    image = rng.integers(0, 256, shape, dtype=np.uint8)
    pts = {name: rng.uniform([10, 10], [110, 80], (len(idx), 2)).astype(np.float32)
           for name, idx in landmarks.DLIB_REGIONS.items()}
    face = _face(pts, shape)
    crops = landmarks.crop_regions(image, face, margin=0.1)
    assert set(crops) == set(landmarks.REGIONS)
    for name in landmarks.REGIONS:
        x, y, w, h = face.region_box(name, shape, margin=0.1)
        p = face.region_points(name)
        assert np.all((p[:, 0] >= x) & (p[:, 0] < x + w) & (p[:, 1] >= y) & (p[:, 1] < y + h))
        assert x >= 0 and y >= 0 and x + w <= shape[1] and y + h <= shape[0]
        assert crops[name].shape == (h, w, 3)
        np.testing.assert_array_equal(crops[name], image[y : y + h, x : x + w])
    # margin = fraction of the larger side of the tight box, on every side, then clipped
    assert landmarks.region_box(np.array([[20, 30], [40, 35]]), shape, 0.5) == (10, 20, 41, 26)
    assert landmarks.region_box(np.array([[-5, 2], [10, 8]]), shape, 0.0) == (0, 2, 11, 7)
    assert landmarks.region_box(np.array([[200, 200], [210, 210]]), shape, 0.0)[2:] == (0, 0)


def test_draw_changes_pixels_only_near_points_and_boxes():
    image = np.full((100, 100, 3), 77, np.uint8)
    face = _eye_face((65, 40), (35, 40))
    drawn = landmarks.draw_landmarks(image, [face], boxes=False)
    assert drawn.shape == image.shape and np.array_equal(image, np.full_like(image, 77))
    ys, xs = np.nonzero(np.any(drawn != image, axis=2))
    assert len(xs) > 0
    dist = np.abs(np.stack([xs, ys], 1)[:, None, :] - face.points[None]).max(2).min(1)
    assert dist.max() <= 1.5  # radius 1 at this size
    for x, y in np.round(face.points).astype(int):
        assert np.any(drawn[y, x] != 77)
    assert tuple(drawn[40, 68]) == landmarks.REGION_COLOURS["left_eye"]  # ring point at x+3
    boxed = landmarks.draw_landmarks(image, [face])
    changed = np.any(boxed != image, axis=2)
    for name in landmarks.REGIONS:  # every region box outline is drawn in its colour
        x, y, w, h = face.region_box(name, image.shape)
        assert tuple(boxed[y, x + w // 2]) == landmarks.REGION_COLOURS[name]
    x, y, w, h = face.box
    outside = changed.copy()
    outside[max(y - 2, 0) : y + h + 2, max(x - 2, 0) : x + w + 2] = False
    for name in landmarks.REGIONS:
        rx, ry, rw, rh = face.region_box(name, image.shape)
        outside[ry : ry + rh, rx : rx + rw] = False
    assert not outside.any()  # nothing drawn outside the face and region boxes


def test_align_face_puts_marked_eyes_at_the_canonical_pixels():
    image = np.zeros((200, 240, 3), np.uint8)
    left, right = (150.0, 90.0), (95.0, 110.0)  # tilted, and not at canonical scale
    for (x, y) in (left, right):
        cv2.circle(image, (int(x), int(y)), 2, (255, 255, 255), -1)
    face = _eye_face(left, right)
    size = 128
    aligned = landmarks.align_face(image, face, size)
    weight = aligned[..., 0].astype(np.float64)
    for name, (fx, fy) in landmarks.CANONICAL_EYES.items():
        yy, xx = np.mgrid[:size, :size]
        near = (np.abs(xx - fx * size) < 6) & (np.abs(yy - fy * size) < 6)
        w = weight * near
        assert w.sum() > 0, name
        got = np.array([(w * xx).sum(), (w * yy).sum()]) / w.sum()
        np.testing.assert_allclose(got, (fx * size, fy * size), atol=1.0)
    with pytest.raises(ValueError, match="coincide"):
        landmarks.alignment_matrix(_eye_face((50, 50), (50, 50)), 64)


# ----------------------------------------------------------------------------- backends


def test_mediapipe_backend_fails_clearly(tmp_path):
    with pytest.raises(landmarks.LandmarkBackendError, match="face_landmarker.task"):
        landmarks.get_backend("mediapipe")
    missing = str(tmp_path / "nope.task")
    with pytest.raises(landmarks.LandmarkBackendError, match="not found: .*nope.task"):
        landmarks.get_backend("mediapipe", model_path=missing)
    with pytest.raises(ValueError, match="unknown landmark backend 'x'.*dlib, mediapipe"):
        landmarks.get_backend("x")
    model = tmp_path / "face_landmarker.task"
    model.write_bytes(b"not a model")
    try:
        import mediapipe  # noqa: F401
    except ImportError:
        with pytest.raises(landmarks.LandmarkBackendError, match="pip install mediapipe"):
            landmarks.get_backend("mediapipe", model_path=str(model))
    else:  # installed: a broken file is named in the error
        with pytest.raises(landmarks.LandmarkBackendError, match="cannot load"):
            landmarks.get_backend("mediapipe", model_path=str(model))


def test_mediapipe_region_indices():
    regions = landmarks.MEDIAPIPE_REGIONS
    assert [len(regions[n]) for n in landmarks.REGIONS] == [16, 16, 24, 40]
    assert 263 in regions["left_eye"] and 33 in regions["right_eye"]  # outer eye corners
    assert 1 in regions["nose"] and 13 in regions["lips"] and 14 in regions["lips"]
    every = [i for idx in regions.values() for i in idx]
    assert len(every) == len(set(every)) and max(every) < 468


# ----------------------------------------------------------------------------- CLI


def test_cli_rows_for_faces_corrupt_and_faceless_files(dlib_backend, generated, tmp_path,
                                                       monkeypatch):
    monkeypatch.setattr(landmarks, "get_backend", lambda *a, **k: dlib_backend)  # loaded once
    src = tmp_path / "in"
    (src / "sub").mkdir(parents=True)
    Image.fromarray(generated[0][0]).save(src / "face.png")
    Image.fromarray(generated[2][0]).convert("CMYK").save(src / "sub" / "face.jpg", quality=95)
    Image.fromarray(np.full((80, 80, 3), 200, np.uint8)).save(src / "blank.jpg")
    (src / "corrupt.jpg").write_bytes((src / "blank.jpg").read_bytes()[:100])
    out = tmp_path / "out"
    rows = landmarks_cli.main([str(src), str(src / "sub"), str(tmp_path / "missing.png"),
                           "--output", str(out), "--align_size", "64"])
    status = {os.path.basename(r["path"]): r["status"] for r in rows}
    assert status == {"blank.jpg": "no_face", "corrupt.jpg": "error", "face.png": "ok",
                      "face.jpg": "ok", "missing.png": "error"}
    with open(out / "landmarks.csv", newline="") as f:
        table = {os.path.basename(r["path"]): r for r in csv.DictReader(f)}
    assert "truncated" in table["corrupt.jpg"]["error"]
    assert "No such file" in table["missing.png"]["error"]
    record = json.load(open(table["face.png"]["json"]))
    assert record["status"] == "ok" and len(record["faces"]) == 1
    assert len(record["faces"][0]["points"]) == 68
    assert record["faces"][0]["regions"]["nose"]["box"] == [
        int(v) for v in table["face.png"]["nose_box"].split(",")]
    for name in ("face_landmarks.png", "face_face0_lips.png", "face_face0_aligned.png",
                 "sub_face_landmarks.png"):
        assert (out / name).is_file(), name
    assert cv2.imread(str(out / "face_face0_aligned.png")).shape == (64, 64, 3)
    assert json.load(open(table["blank.jpg"]["json"]))["faces"] == []


def test_predict_face_align(trained_workdir, dlib_backend, generated, tmp_path, monkeypatch):

    workdir, _ = trained_workdir
    face = generated[0][0]
    Image.fromarray(face).save(tmp_path / "face.png")
    Image.fromarray(np.full((64, 64, 3), 90, np.uint8)).save(tmp_path / "blank.png")
    monkeypatch.setattr(landmarks, "get_backend", lambda *a, **k: dlib_backend)  # loaded once
    rows = {os.path.basename(r["path"]): r
            for r in scoring.predict_paths(workdir, [str(tmp_path)], face_align=True)}
    assert rows["blank.png"]["status"] == "no_face"
    assert rows["face.png"]["status"] == "ok" and 0.0 <= rows["face.png"]["p_fake"] <= 1.0
    assert tuple(rows["face.png"]["face_box"]) == dlib_backend.detect(face)[0].box


def test_predict_face_align_falls_back_to_the_haar_crop(trained_workdir, generated, tmp_path,
                                                        monkeypatch):
    from deepfake_jax.parsing import faces

    def unavailable(*args, **kwargs):
        raise landmarks.LandmarkBackendError("dlib is not installed (simulated)")

    workdir, _ = trained_workdir
    face = generated[0][0]
    Image.fromarray(face).save(tmp_path / "face.png")
    monkeypatch.setattr(landmarks, "get_backend", unavailable)
    assert landmarks.make_face_aligner(32) is None
    # Without a backend, --face_align is --face_crop: the Haar box (or no_face).
    haar_box = faces.detect_largest_face(face)
    row = scoring.predict_paths(workdir, [str(tmp_path / "face.png")], face_align=True)[0]
    assert row["face_box"] == haar_box
    assert row["status"] == ("ok" if haar_box is not None else "no_face")
