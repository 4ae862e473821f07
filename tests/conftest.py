"""Test setup: 8 fake CPU devices (set before jax is imported), shared tiny datasets."""

import os

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import pytest  # noqa: E402


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
