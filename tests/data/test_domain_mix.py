"""Domain-balanced mixing: `config.data.mix` (deepfake_jax/data/domain_mix.py)."""

import json
import os

import grain
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import default
from deepfake_jax import tasks
from deepfake_jax.data import datasets, domain_mix, input_pipeline, records
from deepfake_jax.training import checkpointing

BATCH = 16


@pytest.fixture(scope="module")
def second_dataset(tmp_path_factory):
    """Another converted synthetic dataset, 8 images per class in train (a third of the first)."""
    from data_prep import convert, synthetic

    root = tmp_path_factory.mktemp("second_dataset")
    images, converted = str(root / "images"), str(root / "arrayrecord")
    synthetic.generate_140k(images, counts={"train": 8, "valid": 6, "test": 6},
                            image_size=32, difficulty=0.0, seed=1)
    convert.convert(images, converted, layout="140k", show_progress=False)
    return converted


class _Identify(grain.transforms.RandomMap):
    """Stands in for decode + augment: which record (its sha256) came at which position."""

    def random_map(self, element, rng):
        position, raw = element
        record = records.decode_record(raw)
        return {"sha": np.array(record["sha256"][:16]), "position": np.int64(position),
                "label": np.int32(record["label"])}


def _shas(dataset_dir):
    return {r["sha256"][:16] for r in input_pipeline.read_metadata(
        records.split_files(dataset_dir, "train"))}


def _iterator(dirs, weights, seed=0, transform=None, **kw):
    files = [records.split_files(d, "train") for d in dirs]
    preprocess = input_pipeline.Preprocess(crop_size=28)
    return domain_mix.train_iterator(files, weights, preprocess, BATCH, seed,
                                     transform=transform or _Identify(), **kw)


def _take(it, n):
    return [next(it) for _ in range(n)]


def test_batches_follow_the_weights_and_tags(tiny_dataset, second_dataset):
    weights = (0.7, 0.3)
    batches = _take(_iterator([tiny_dataset, second_dataset], weights), 50)  # 800 examples
    domain = np.concatenate([b["domain"] for b in batches])
    sha = np.concatenate([b["sha"] for b in batches])
    np.testing.assert_allclose(np.mean(domain == 1), 0.3, atol=0.01)
    for b in batches:  # every batch is close to the mix too, not just the total
        assert 2 <= int(np.sum(b["domain"] == 1)) <= 8
    first, second = _shas(tiny_dataset), _shas(second_dataset)
    assert all(s in first for s in sha[domain == 0])
    assert all(s in second for s in sha[domain == 1])
    # the small domain is repeated (16 records, 240 draws), each epoch of it complete
    drawn = sha[domain == 1]
    assert set(drawn[:16].tolist()) == second and set(drawn[16:32].tolist()) == second
    assert set(sha[domain == 0][:48].tolist()) == first
    np.testing.assert_array_equal(np.concatenate([b["position"] for b in batches]),
                                  np.arange(800))  # augmentation keyed by global position


def test_deterministic_under_a_seed_and_processes_partition(tiny_dataset, second_dataset):
    dirs, w = [tiny_dataset, second_dataset], (1.0, 1.0)
    a, b = _take(_iterator(dirs, w, seed=3), 4), _take(_iterator(dirs, w, seed=3), 4)
    c = _take(_iterator(dirs, w, seed=4), 4)
    for x, y in zip(a, b, strict=True):
        for k in x:
            np.testing.assert_array_equal(x[k], y[k])
    assert any(not np.array_equal(x["sha"], z["sha"]) for x, z in zip(a, c, strict=True))
    # two processes: interleaved halves of each global batch, whatever the process count
    halves = [_take(_iterator(dirs, w, seed=3, process_index=i, process_count=2), 4)
              for i in range(2)]
    for g, h0, h1 in zip(a, *halves, strict=True):
        merged = np.empty_like(g["sha"])
        merged[0::2], merged[1::2] = h0["sha"], h1["sha"]
        np.testing.assert_array_equal(merged, g["sha"])


def test_iterator_state_round_trip(tiny_dataset, second_dataset, tmp_path):
    dirs, w = [tiny_dataset, second_dataset], (0.6, 0.4)
    preprocess = input_pipeline.Preprocess(crop_size=28)
    files = [records.split_files(d, "train") for d in dirs]
    it = domain_mix.train_iterator(files, w, preprocess, BATCH, 0)  # the real decode + crop
    _take(it, 3)
    ckpt = checkpointing.Checkpointer(str(tmp_path), async_save=False)
    ckpt.save(3, {"x": jnp.zeros(())}, it)
    ckpt.wait()
    want = _take(it, 2)
    fresh = domain_mix.train_iterator(files, w, preprocess, BATCH, 0)
    _, restored = ckpt.restore(3, {"x": jax.ShapeDtypeStruct((), jnp.float32)}, fresh)
    ckpt.close()
    for x, y in zip(_take(restored, 2), want, strict=True):
        for k in ("image", "label", "domain"):
            np.testing.assert_array_equal(x[k], y[k])
    skipped = domain_mix.train_iterator(files, w, preprocess, BATCH, 0)
    input_pipeline.skip_to_batch(skipped, 3)  # other process count: re-positioned by batch
    np.testing.assert_array_equal(next(skipped)["image"], want[0]["image"])


def test_config_errors(tiny_dataset, tmp_path):
    config = default.get_config("tiny")
    for mix, match in [(("a", "/x", 1.0), r"config.data.mix\[0\] = 'a': expected"),
                       ((("a", tiny_dataset, 0),), r"mix\[0\] .*weight must be a positive"),
                       ((("a", tiny_dataset, 1), ("a", tiny_dataset, 1)), "must be unique")]:
        config.data.mix = mix
        with pytest.raises(ValueError, match=match):
            datasets.prepare(config, str(tmp_path))
    config.data.mix = (("a", tiny_dataset, 1.0), ("b", str(tmp_path / "nope"), 1.0))
    with pytest.raises(FileNotFoundError, match="domain 'b': .*nope.* is not a converted"):
        datasets.prepare(config, str(tmp_path))


def test_kfold_and_search_refuse_a_mix_up_front(tiny_dataset, second_dataset, tmp_path):
    # both need one folder (k-fold re-splits it, a search hands it to every trial): a clear
    # error before anything runs, not one from deep inside the fold writer or a trial
    import ml_collections

    from deepfake_jax import search
    from deepfake_jax.experiments import kfold

    config = default.get_config("tiny")
    config.data.mix = (("big", tiny_dataset, 0.5), ("small", second_dataset, 0.5))
    config.kfold = 3
    with pytest.raises(ValueError, match=r"3-fold cross-validation needs one converted dataset.*"
                                         r"combines 2 domains \(big, small\)"):
        kfold.run_kfold(config, str(tmp_path / "cv"))
    assert not (tmp_path / "cv" / "folds_data").exists()
    config.search = ml_collections.ConfigDict(dict(
        space=(("optimizer.learning_rate", "log_float", 1e-4, 1e-2),), num_trials=1,
        direction="maximize", metric="roc_auc", split="valid"))
    with pytest.raises(ValueError, match="the hyper-parameter search needs one converted"):
        search.run_search(config, str(tmp_path / "search"))


def test_training_run_reports_per_domain_rows(tiny_dataset, second_dataset, tmp_path):
    config = default.get_config("tiny")
    config.data.mix = (("big", tiny_dataset, 0.5), ("small", second_dataset, 0.5))
    config.num_train_steps = 2
    config.eval_every_steps = 2
    config.mesh.data = 1  # compiles faster; the data pipeline is the same on any mesh
    summary = tasks.train_and_evaluate(config, str(tmp_path))
    assert summary["step"] == 2
    with open(tmp_path / "metrics.jsonl") as f:
        val = [r for r in map(json.loads, f) if r["kind"] == "val"]
    assert {"val_roc_auc", "val_roc_auc_big", "val_roc_auc_small"} <= set(val[-1])
    for split, (n_big, n_small) in (("valid", (24, 12)), ("test", (24, 12))):
        with open(os.path.join(tmp_path, "eval", split, "metrics.json")) as f:
            m = json.load(f)
        assert m["num_examples"] == n_big + n_small  # the union of both domains
        rows = {r["value"]: r for r in m["subsets"] if r["subset"] == "domain"}
        assert set(rows) == {"big", "small"}
        assert (rows["big"]["num_real"] + rows["big"]["num_fake"],
                rows["small"]["num_real"] + rows["small"]["num_fake"]) == (n_big, n_small)
        assert m["threshold_from"] == "valid"  # pooled validation split

    # the evaluation CLI of that run: the same pooled threshold and per-domain rows
    from deepfake_jax import evaluate

    out = evaluate.evaluate_checkpoint(str(tmp_path), bootstrap=0, devices=jax.devices()[:1])
    rows = {r["value"] for r in out["mix"]["subsets"] if r["subset"] == "domain"}
    assert rows == {"big", "small"} and out["mix"]["num_examples"] == 36
    assert os.path.exists(tmp_path / "eval" / "mix" / "test" / "metrics.json")
