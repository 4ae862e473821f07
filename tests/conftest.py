"""Test setup: 8 fake CPU devices (set before jax is imported), shared tiny datasets."""

import os

# Optimisation level 0: fewer LLVM passes, ~30% less compile time for the suite's many tiny
# programs (compiling, not running, is most of its time). Numerics stay within every test's
# tolerance (parity tests included); subprocess tests derive their XLA_FLAGS from these.
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "")
    + " --xla_force_host_platform_device_count=8 --xla_backend_optimization_level=0"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

# Most of the suite's time is XLA compiling the same tiny models again (each test builds new jitted
# closures; metadata such as line numbers is not part of the cache key). A persistent compilation
# cache, fresh for each pytest run and removed at exit, lets later tests and the subprocesses the
# tests start (they inherit os.environ) load those executables instead. Correctness never depends
# on it: a miss just compiles. JAX_ENABLE_COMPILATION_CACHE=false turns it off; a caller's own
# JAX_COMPILATION_CACHE_DIR is respected.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    import atexit
    import shutil
    import tempfile

    _xla_cache = tempfile.mkdtemp(prefix="dfj-test-xla-cache-")
    atexit.register(shutil.rmtree, _xla_cache, ignore_errors=True)
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _xla_cache
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "-1")

import pytest  # noqa: E402
from timm_import import timm  # noqa: E402, F401 (the timm fixture, for every test file)


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory):
    """A converted synthetic 140k-style dataset: 24 images per class and split, 32 px."""
    from data_prep import convert, synthetic

    root = tmp_path_factory.mktemp("tiny_dataset")
    images, converted = str(root / "images"), str(root / "arrayrecord")
    synthetic.generate_140k(images, counts={"train": 24, "valid": 12, "test": 12},
                            image_size=32, difficulty=0.0, seed=0)
    convert.convert(images, converted, layout="140k", show_progress=False)
    return converted


@pytest.fixture(scope="session")
def trained_workdir(tmp_path_factory, tiny_dataset):
    """The tiny default recipe trained once on 8 devices: (workdir, train summary)."""
    import jax

    from configs import default
    from deepfake_jax import tasks

    workdir = str(tmp_path_factory.mktemp("trained"))
    config = default.get_config("tiny")
    config.data.dir = tiny_dataset
    assert jax.device_count() == 8
    summary = tasks.train_and_evaluate(config, workdir)
    return workdir, summary


@pytest.fixture(scope="session")
def parsing_run(tmp_path_factory):
    """configs/bisenet_face_parsing.py:tiny trained (4 steps) on 8 devices: (workdir, summary)."""
    import jax

    from configs import bisenet_face_parsing
    from deepfake_jax import tasks

    workdir = str(tmp_path_factory.mktemp("parsing_run"))
    config = bisenet_face_parsing.get_config("tiny")
    assert jax.device_count() == 8
    return workdir, tasks.train_and_evaluate(config, workdir)
