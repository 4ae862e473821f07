"""TFDS datasets in (config.data.tfds, read with tfds.data_source) and out
(data_prep.convert --format tfds). Without TensorFlow; skipped without the `tfds` extra."""

import csv
import json
import os
import subprocess
import sys

import cv2
import numpy as np
import pytest

tfds = pytest.importorskip("tensorflow_datasets")

from data_prep import convert  # noqa: E402
from deepfake_jax.data import records, tfds_source  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def write_jpeg(path, seed, size=32):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    cv2.imwrite(str(path), np.random.default_rng(seed).integers(0, 256, (size, size, 3),
                                                                np.uint8))
    return str(path)


def test_convert_format_tfds_loads_with_data_source(tmp_path):
    src = tmp_path / "faces"
    originals = {}
    for cls in ("real", "fake"):
        for i in range(8):
            path = write_jpeg(src / cls / f"{i}.jpg", hash((cls, i)) % 2**32)
            originals[f"{cls}/{i}.jpg"] = open(path, "rb").read()
    (src / "fake" / "broken.jpg").write_bytes(originals["fake/0.jpg"][:200])  # truncated
    out = str(tmp_path / "out")
    manifest = convert.convert(str(src), out, split_ratios="0.5,0.25,0.25", show_progress=False,
                               output_format="tfds", tfds_name="my_faces")
    assert manifest["format"] == "tfds" and manifest["skipped"] == 1
    with open(os.path.join(out, "report.json")) as f:
        assert json.load(f)["skipped"]["files"][0]["path"] == "fake/broken.jpg"
    with open(os.path.join(out, "records.csv")) as f:
        index = list(csv.DictReader(f))
    assert len(index) == 16
    for split in ("train", "valid", "test"):
        ds = tfds.data_source("my_faces", split=split, data_dir=out,
                              decoders={"image": tfds.decode.SkipDecoding()})
        assert len(ds) == manifest["splits"][split]["num_records"]
        rows = [r for r in index if r["split"] == split]
        for r in rows:  # records.csv's index is the data_source index
            example = ds[int(r["index_in_split"])]
            assert example["path"].decode() == r["path"]
            assert example["image"] == originals[r["path"]]  # the original bytes, unchanged
            assert example["label"] == int(r["path"].startswith("fake/")) == int(r["label"])
    builder = tfds.builder_from_directory(os.path.join(out, "my_faces", "1.0.0"))
    assert builder.info.features["label"].names == ["real", "fake"]
    assert set(builder.info.splits) == {"train", "valid", "test"}
    with pytest.raises(ValueError, match="config.data.tfds.name=my_faces"):
        records.read_manifest(out)
    with pytest.raises(convert.OutputExistsError):
        convert.convert(str(src), out, show_progress=False, output_format="tfds",
                        tfds_name="my_faces")
    with pytest.raises(ValueError, match="snake_case"):
        convert.convert(str(src), str(tmp_path / "o2"), show_progress=False,
                        output_format="tfds", tfds_name="My-Faces")


def _write_own_builder(data_dir, images):
    """A researcher's own builder: other feature names, classes listed fake first."""

    class OwnFaces(tfds.core.GeneratorBasedBuilder, skip_registration=True):
        VERSION = tfds.core.Version("0.1.0")

        def _info(self):
            return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
                "img": tfds.features.Image(encoding_format="jpeg"),
                "kind": tfds.features.ClassLabel(names=["fake", "real"]),
                "file": tfds.features.Text()}))

        def _split_generators(self, dl_manager):
            return {split: self._generate_examples(split)
                    for split in ("train", "validation", "test")}

        def _generate_examples(self, split):
            for cls in ("real", "fake"):
                folder = os.path.join(images, split, cls)
                for name in sorted(os.listdir(folder)):
                    yield f"{cls}/{name}", {"img": os.path.join(folder, name),
                                            "kind": cls, "file": f"{split}/{cls}/{name}"}

    OwnFaces(data_dir=data_dir, file_format="array_record").download_and_prepare()


def test_tfds_dataset_trains_and_evaluates_through_main(tmp_path):
    from data_prep import synthetic

    images = str(tmp_path / "images")
    synthetic.generate_140k(images, counts={"train": 16, "valid": 8, "test": 8},
                            image_size=32, difficulty=0.0, seed=0)
    for cls in ("real", "fake"):  # TFDS catalogue split names
        os.makedirs(os.path.join(images, "validation"), exist_ok=True)
        os.rename(os.path.join(images, "valid", cls), os.path.join(images, "validation", cls))
    data_dir = str(tmp_path / "tfds")
    _write_own_builder(data_dir, images)
    workdir = tmp_path / "run"
    run = subprocess.run(
        [sys.executable, "-m", "deepfake_jax.main", "--config",
         "configs/small_data_faces.py:tiny", "--workdir", str(workdir),
         "--config.data.tfds.name=own_faces", f"--config.data.tfds.data_dir={data_dir}",
         "--config.data.tfds.image_key=img", "--config.data.tfds.label_key=kind",
         "--config.data.tfds.path_key=file", "--config.data.val_split=validation"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
        env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert run.returncode == 0, run.stderr[-3000:]
    with open(workdir / "eval" / "test" / "metrics.json") as f:
        test = json.load(f)
    assert test["num_examples"] == 16 and test["num_fake"] == 8
    with open(workdir / "eval" / "test" / "predictions.csv") as f:
        rows = list(csv.DictReader(f))
    # "fake" is class 0 in this builder: mapped to our label 1 by name
    assert {(r["path"].split("/")[1], r["label"]) for r in rows} == {("real", "0"), ("fake", "1")}
    assert not os.path.exists(workdir / "data"), "nothing was generated or converted"
    from deepfake_jax import evaluate  # a checkpoint of a TFDS run evaluates on its splits

    again = evaluate.evaluate_checkpoint(str(workdir), split="test", bootstrap=0)
    assert again["own_faces"]["roc_auc"] == pytest.approx(test["roc_auc"], abs=1e-5)
    assert os.path.exists(workdir / "eval" / "own_faces" / "test" / "predictions.csv")

    bad = tfds_source.TfdsSplit("own_faces", "validation", data_dir, image_key="image")
    with pytest.raises(ValueError, match="image_key='image' is not a feature"):
        bad.source()
    with pytest.raises(ValueError, match="split 'valid' is not in"):
        tfds_source.TfdsSplit("own_faces", "valid", data_dir, image_key="img",
                              label_key="kind").source()
    with pytest.raises(ValueError, match="no prepared TFDS dataset 'nope'"):
        tfds_source.TfdsSplit("nope", "train", data_dir).source()
