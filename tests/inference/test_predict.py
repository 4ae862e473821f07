"""`predict` scores image files exactly as evaluation scores their records; bad files get rows."""

import csv
import json
import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest
from PIL import Image

from data_prep import synthetic
from deepfake_jax import predict, runs
from deepfake_jax.inference import scoring
from deepfake_jax.parsing import faces

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """A folder of good and bad files; the JPEGs are the tiny dataset's own test images."""
    root = tmp_path_factory.mktemp("inputs")
    gen = str(root / "generated")
    # Same generator arguments as the `tiny_dataset` fixture: every image's RNG depends only on
    # (seed, split, class, index), so these are byte-identical to its first test images.
    synthetic.generate_140k(gen, counts={"test": 2}, image_size=32, difficulty=0.0, seed=0)
    mixed = root / "mixed"
    (mixed / "sub").mkdir(parents=True)
    jpegs = []
    for cls in ("real", "fake"):
        for name in sorted(os.listdir(os.path.join(gen, "test", cls))):
            shutil.copy(os.path.join(gen, "test", cls, name), mixed / name)
            jpegs.append(name)
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (40, 40), dtype=np.uint8), "L").save(mixed / "gray.png")
    Image.fromarray(rng.integers(0, 256, (36, 48, 4), dtype=np.uint8), "RGBA").save(
        mixed / "rgba.png")
    Image.fromarray(rng.integers(0, 256, (200, 300, 3), dtype=np.uint8)).save(
        mixed / "large.JPG", quality=95)
    data = (mixed / jpegs[0]).read_bytes()
    (mixed / "corrupt.jpg").write_bytes(data[: len(data) // 2])
    (mixed / "notes.png").write_text("not an image at all\n")
    (mixed / "readme.txt").write_text("skipped: not an image extension\n")
    shutil.copy(mixed / jpegs[1], mixed / "sub" / "nested.jpeg")
    # --face_crop inputs: a uniform image, and a 160-px synthetic face the cascade finds.
    face_dir = root / "faces"
    face_dir.mkdir()
    Image.fromarray(np.full((120, 120, 3), 180, np.uint8)).save(face_dir / "uniform.png")
    synthetic.generate_140k(str(root / "big"), counts={"test": 1}, image_size=160,
                            difficulty=0.0, seed=0)
    shutil.copy(root / "big" / "test" / "fake" / "test_fake_00000.jpg", face_dir / "face.jpg")
    return {"mixed": str(mixed), "jpegs": jpegs, "faces": str(face_dir)}


def _by_name(rows):
    return {os.path.basename(r["path"]): r for r in rows}


def test_statuses_columns_and_csv(trained_workdir, inputs):
    workdir, _ = trained_workdir
    rows = scoring.predict_paths(workdir, [inputs["mixed"]], batch_size=3)
    by = _by_name(rows)
    assert set(by) == {*inputs["jpegs"], "gray.png", "rgba.png", "large.JPG", "corrupt.jpg",
                       "notes.png"}  # no .txt, no subfolder without --recursive
    for name in (*inputs["jpegs"], "gray.png", "rgba.png", "large.JPG"):
        r = by[name]
        assert r["status"] == "ok" and r["error"] == "", r
        assert 0.0 <= r["p_fake"] <= 1.0
        assert r["label"] == ("fake" if r["p_fake"] >= r["threshold"] else "real")
    assert by["corrupt.jpg"]["status"] == "error" and "truncated" in by["corrupt.jpg"]["error"]
    assert by["notes.png"]["status"] == "error"
    assert "not a recognised image" in by["notes.png"]["error"]
    for name in ("corrupt.jpg", "notes.png"):
        assert by[name]["p_fake"] is None and by[name]["label"] == ""

    out = predict.write_predictions(rows, predict.default_output(workdir))
    assert out == os.path.join(workdir, "predictions", "predictions.csv")
    with open(out, newline="") as f:
        reader = csv.DictReader(f)
        assert tuple(reader.fieldnames) == predict.COLUMNS
        written = {os.path.basename(r["path"]): r for r in reader}
    assert written["corrupt.jpg"]["p_fake"] == "" and written["corrupt.jpg"]["status"] == "error"
    assert float(written["gray.png"]["p_fake"]) == pytest.approx(by["gray.png"]["p_fake"],
                                                                  abs=1e-6)
    text = predict.summary(rows, out)
    assert "ok 7" in text and "error 2" in text and out in text

    nested = scoring.predict_paths(workdir, [inputs["mixed"]], recursive=True)
    assert _by_name(nested)["nested.jpeg"]["status"] == "ok"
    assert len(nested) == len(rows) + 1


def test_scores_equal_the_evaluation_of_the_same_records(trained_workdir, inputs):
    workdir, summary = trained_workdir
    paths = [os.path.join(inputs["mixed"], n) for n in inputs["jpegs"]]
    # One device and a batch size that is not the trainer's: the scores must not change.
    rows = scoring.predict_paths(workdir, paths, batch_size=3, devices=jax.devices()[:1])
    with open(os.path.join(workdir, "eval", "test", "predictions.csv"), newline="") as f:
        evaluated = {os.path.basename(r["path"]): r for r in csv.DictReader(f)}
    threshold = summary["eval"]["valid"]["threshold"]
    for r in rows:
        ev = evaluated[os.path.basename(r["path"])]
        assert r["p_fake"] == pytest.approx(float(ev["p_fake"]), abs=1e-5)
        assert r["threshold"] == pytest.approx(threshold, abs=1e-12)
        assert r["label"] == ("fake" if int(ev["predicted"]) else "real")
        assert r["threshold_source"] == os.path.join(workdir, "eval", "valid", "metrics.json")


def test_face_crop(trained_workdir, inputs):
    workdir, _ = trained_workdir
    corrupt = os.path.join(inputs["mixed"], "corrupt.jpg")
    rows = scoring.predict_paths(workdir, [inputs["faces"], corrupt], face_crop=True)
    by = _by_name(rows)
    assert by["uniform.png"]["status"] == "no_face" and by["uniform.png"]["p_fake"] is None
    assert by["corrupt.jpg"]["status"] == "error"
    face = by["face.jpg"]
    assert face["status"] == "ok" and 0.0 <= face["p_fake"] <= 1.0
    x, y, w, h = face["face_box"]
    assert w >= 24 and h >= 24 and x >= 0 and y >= 0 and x + w <= 160 and y + h <= 160


def test_crop_face_is_square_and_clipped():
    rgb = np.arange(100 * 80 * 3, dtype=np.uint32).reshape(100, 80, 3).astype(np.uint8)
    assert faces.square_box((30, 40, 20, 20), rgb.shape, 0.5) == (20, 30, 40, 40)
    assert faces.square_box((0, 0, 20, 10), rgb.shape, 0.5) == (0, 0, 40, 40)  # moved inside
    assert faces.square_box((10, 10, 60, 60), rgb.shape, 0.3) == (0, 0, 80, 96)  # clipped
    crop = faces.crop_face(rgb, (30, 40, 20, 20), margin=0.5)
    assert crop.shape == (40, 40, 3) and np.array_equal(crop, rgb[30:70, 20:60])
    assert faces.detect_largest_face(np.full((64, 64, 3), 200, np.uint8)) is None


def test_json_output_and_determinism(trained_workdir, inputs, tmp_path):
    workdir, _ = trained_workdir
    outs = []
    for i in range(2):
        rows = scoring.predict_paths(workdir, [inputs["mixed"]], batch_size=8)
        path = predict.write_predictions(rows, str(tmp_path / f"run{i}" / "preds.json"))
        with open(path) as f:
            outs.append(json.load(f))
    assert outs[0] == outs[1]
    assert [set(r) for r in outs[0]] == [set(predict.COLUMNS)] * len(outs[0])
    statuses = sorted(r["status"] for r in outs[0])
    assert statuses == ["error"] * 2 + ["ok"] * 7
    assert all(isinstance(r["p_fake"], float) for r in outs[0] if r["status"] == "ok")


def test_threshold_fallback(tmp_path):
    threshold, source = runs.find_threshold(str(tmp_path))
    assert threshold == 0.5 and source.startswith("default")
    other = tmp_path / "eval" / "other" / "test"
    other.mkdir(parents=True)
    (other / "metrics.json").write_text(json.dumps({"threshold": 0.25}))
    assert runs.find_threshold(str(tmp_path)) == (0.25, str(other / "metrics.json"))


def test_cli_without_a_readable_image_fails_clearly(trained_workdir, inputs, tmp_path):
    workdir, _ = trained_workdir
    out = tmp_path / "preds.csv"
    run = subprocess.run(
        [sys.executable, "-m", "deepfake_jax.predict", "--workdir", workdir, "--output",
         str(out), "--face_crop", os.path.join(inputs["mixed"], "corrupt.jpg"),
         os.path.join(inputs["mixed"], "notes.png"), str(tmp_path / "missing.jpg")],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
        env={**os.environ, "JAX_PLATFORMS": "cpu"},
    )
    assert run.returncode != 0
    assert "no readable image among the 3 file(s)" in run.stderr
    assert "error 3" in run.stdout
    with open(out, newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["status"] for r in rows] == ["error"] * 3
    assert "No such file" in rows[2]["error"]
