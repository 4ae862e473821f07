"""`deepfake_jax.export` artifacts score like the Flax model, for any batch size, and load
with jax + numpy only (`deepfake_jax.inference.serving`)."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

pytest.importorskip("flatbuffers", reason="jax.export serialization needs the 'export' extra")

from deepfake_jax import export, runs
from deepfake_jax.inference import serving  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def exported(trained_workdir, tmp_path_factory):
    workdir, summary = trained_workdir
    path = str(tmp_path_factory.mktemp("export") / "model.jaxexport")
    meta = export.export_run(workdir, path)
    return workdir, summary, path, meta


def _images(n, size, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def reference(exported):
    """5 random images and their p_fake by the trainer's own eval step (EMA weights)."""
    workdir, _, _, meta = exported
    images = _images(5, meta["crop_size"])
    return images, export.flax_p_fake(workdir, images)


def test_parity_with_the_flax_model_for_any_batch(exported, reference):
    _, _, path, _ = exported
    images, reference = reference
    detector = serving.load_exported(path)
    assert jax.export.is_symbolic_dim(detector.exported.in_avals[0].shape[0])
    for batch in (images[:1], images):  # one compiled artifact, batch 1 and 5
        got = detector(batch)
        assert got.shape == (len(batch),) and got.dtype == np.float32
        np.testing.assert_allclose(got, reference[:len(batch)], rtol=0, atol=1e-5)
    assert detector(images[0]).shape == (1,)  # a single HWC image


def test_metadata(exported):
    workdir, summary, path, meta = exported
    config = runs.load_run_config(workdir)
    with open(serving.metadata_path(path)) as f:
        assert json.load(f) == meta
    assert meta["crop_size"] == config.input.crop_size
    assert meta["mean"] == list(config.input.mean) and meta["std"] == list(config.input.std)
    assert meta["threshold"] == pytest.approx(summary["eval"]["valid"]["threshold"], abs=1e-12)
    assert meta["use_ema"] is True and meta["model_name"] == "resnet"
    assert meta["platforms"] == [jax.default_backend()]
    detector = serving.load_exported(path)
    p = np.array([meta["threshold"] - 1e-3, meta["threshold"]])
    assert detector.labels(p) == ["real", "fake"]


def test_bad_inputs_and_files(exported, tmp_path):
    _, _, path, meta = exported
    detector = serving.load_exported(path)
    s = meta["crop_size"]
    with pytest.raises(ValueError, match=rf"\(N, {s}, {s}, 3\).*float32"):
        detector(_images(2, s).astype(np.float32))
    with pytest.raises(ValueError, match=rf"got uint8 \(2, {s + 1}, {s + 1}, 3\)"):
        detector(_images(2, s + 1))
    with pytest.raises(ValueError, match="smaller than"):
        serving.center_crop(_images(1, s - 1)[0], s)
    big = _images(1, s + 7)[0]
    crop = serving.center_crop(big, s)
    assert crop.shape == (s, s, 3) and np.array_equal(crop, big[3:3 + s, 3:3 + s])
    lonely = tmp_path / "lonely.jaxexport"
    lonely.write_bytes(open(path, "rb").read())
    with pytest.raises(FileNotFoundError, match="lonely.jaxexport.json does not exist"):
        serving.load_exported(str(lonely))
    with pytest.raises(SystemExit, match="--checkpoint='7'"):
        export.main(["--workdir", exported[0], "--output", str(tmp_path / "x.jaxexport"),
                     "--checkpoint", "7"])


_SERVE = """
import json, sys
import numpy as np
for name in ("flax", "optax", "orbax", "grain", "cv2", "ml_collections", "deepfake_jax.training",
             "deepfake_jax.models"):
    sys.modules[name] = None  # importing any of them now fails
from deepfake_jax.inference.serving import load_exported
detector = load_exported(sys.argv[1])
images = np.load(sys.argv[2])
loaded = sorted(m for m, mod in sys.modules.items()
                if mod is not None and m.startswith(("deepfake_jax.", "flax", "optax")))
print(json.dumps({"p_fake": detector(images).tolist(), "loaded": loaded}))
"""


def test_serving_needs_only_jax_and_numpy(exported, reference, tmp_path):
    _, _, path, _ = exported
    images, expected = reference
    np.save(tmp_path / "images.npy", images)
    run = subprocess.run([sys.executable, "-c", _SERVE, path, str(tmp_path / "images.npy")],
                         cwd=ROOT, capture_output=True, text=True, timeout=120,
                         env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert run.returncode == 0, run.stderr[-2000:]
    out = json.loads(run.stdout.strip().splitlines()[-1])
    # the package (with its XLA flags, stdlib only) and the serving module: no model, training
    # or pipeline code
    assert out["loaded"] == ["deepfake_jax.inference", "deepfake_jax.inference.serving",
                             "deepfake_jax.xla_options"]
    np.testing.assert_allclose(out["p_fake"], expected, atol=1e-5)
