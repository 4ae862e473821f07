import numpy as np
import pytest

from deepfake_jax.data import augment_ops, input_pipeline, records


def _pre(crop=28):
    return input_pipeline.Preprocess(crop_size=crop)


def test_train_batches_shapes_and_determinism(tiny_dataset):
    files = records.split_files(tiny_dataset, "train")
    a = input_pipeline.train_iterator(files, _pre(), 8, seed=3)
    b = input_pipeline.train_iterator(files, _pre(), 8, seed=3)
    c = input_pipeline.train_iterator(files, _pre(), 8, seed=4)
    ba, bb, bc = next(a), next(b), next(c)
    assert ba["image"].shape == (8, 28, 28, 3) and ba["image"].dtype == np.uint8
    assert ba["label"].dtype == np.int32 and set(ba["label"]) <= {0, 1}
    np.testing.assert_array_equal(ba["image"], bb["image"])
    assert not np.array_equal(ba["image"], bc["image"])


def test_iterator_state_restores_the_same_next_batches(tiny_dataset):
    files = records.split_files(tiny_dataset, "train")
    it = input_pipeline.train_iterator(files, _pre(), 8, seed=0)
    for _ in range(7):  # past one epoch (48 examples / 8 = 6 batches)
        next(it)
    state = it.get_state()
    expected = [next(it) for _ in range(3)]
    fresh = input_pipeline.train_iterator(files, _pre(), 8, seed=0)
    fresh.set_state(state)
    for want in expected:
        got = next(fresh)
        np.testing.assert_array_equal(got["image"], want["image"])
        np.testing.assert_array_equal(got["label"], want["label"])


def test_epochs_are_reshuffled_and_cover_every_example(tiny_dataset):
    files = records.split_files(tiny_dataset, "train")
    n = input_pipeline.num_records(files)
    it = input_pipeline.train_iterator(files, input_pipeline.Preprocess(32, flip_prob=0), n, 0)
    epoch1, epoch2 = next(it)["image"], next(it)["image"]
    key = lambda batch: sorted(img.tobytes() for img in batch)
    assert key(epoch1) == key(epoch2), "each epoch shows every example once"
    assert not np.array_equal(epoch1, epoch2), "in a new order"


def test_process_shards_partition_the_global_batch(tiny_dataset):
    files = records.split_files(tiny_dataset, "train")
    pre = input_pipeline.Preprocess(32, flip_prob=0)
    whole = next(input_pipeline.train_iterator(files, pre, 12, seed=1))["image"]
    parts = [next(input_pipeline.train_iterator(files, pre, 12, seed=1, process_index=i,
                                                process_count=3))["image"] for i in range(3)]
    assert all(p.shape[0] == 4 for p in parts)
    assert sorted(x.tobytes() for p in parts for x in p) == sorted(x.tobytes() for x in whole)


@pytest.mark.parametrize("process_count", [1, 3])
def test_eval_batches_cover_each_record_once_with_padding(tiny_dataset, process_count):
    files = records.split_files(tiny_dataset, "valid")
    n = input_pipeline.num_records(files)  # 24
    seen, counts = [], []
    for p in range(process_count):
        batches = list(input_pipeline.eval_batches(files, _pre(), 9, process_index=p,
                                                   process_count=process_count))
        counts.append(len(batches))
        for b in batches:
            assert b["image"].shape[0] == 9 // process_count
            valid = b["mask"] > 0
            assert np.all(b["index"][~valid] == -1)
            seen += b["index"][valid].tolist()
    assert len(set(counts)) == 1, "every process runs the same number of eval steps"
    assert sorted(seen) == list(range(n))


def test_eval_view_is_center_crop_and_small_images_are_upscaled():
    image = np.arange(40 * 50 * 3, dtype=np.uint8).reshape(40, 50, 3)
    out = augment_ops.eval_view(image, 20)
    np.testing.assert_array_equal(out, image[10:30, 15:35])
    small = augment_ops.eval_view(np.zeros((10, 12, 3), np.uint8), 20)
    assert small.shape == (20, 20, 3)


def test_worker_processes_give_the_same_batches(tiny_dataset):
    files = records.split_files(tiny_dataset, "train")
    inline = input_pipeline.train_iterator(files, _pre(), 8, seed=5)
    workers = input_pipeline.train_iterator(files, _pre(), 8, seed=5, num_workers=2)
    for _ in range(3):
        a, b = next(inline), next(workers)
        np.testing.assert_array_equal(a["image"], b["image"])
        np.testing.assert_array_equal(a["label"], b["label"])


def test_eval_crop_size_sets_the_eval_view_and_leaves_training_crops_alone(tiny_dataset):
    import ml_collections

    cfg = ml_collections.ConfigDict(dict(crop_size=28, eval_crop_size=32))
    pre = input_pipeline.Preprocess.from_config(cfg)
    assert (pre.crop_size, pre.eval_size, input_pipeline.eval_crop_size(cfg)) == (28, 32, 32)
    batch = next(input_pipeline.eval_batches(records.split_files(tiny_dataset, "valid"), pre, 4))
    assert batch["image"].shape == (4, 32, 32, 3)  # the whole 32-px image, not a 28-px crop
    train = input_pipeline.train_iterator(records.split_files(tiny_dataset, "train"), pre, 4,
                                          seed=0)
    assert next(train)["image"].shape == (4, 28, 28, 3)
    cfg.eval_crop_size = None
    assert input_pipeline.eval_crop_size(cfg) == 28
