import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from deepfake_jax import checkpointing


def _state(x):
    return {"w": jnp.full((4, 3), x, jnp.float32), "step": jnp.array(int(x), jnp.int32)}


def _abstract(state):
    return jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), state)


def test_keeps_latest_and_best_k_and_round_trips(tmp_path):
    ckpt = checkpointing.Checkpointer(str(tmp_path), keep_best=2, async_save=False)
    aucs = {1: 0.9, 2: 0.5, 3: 0.95, 4: 0.6, 5: 0.7}
    for step, auc in aucs.items():
        ckpt.save(step, _state(step), metrics={"val_roc_auc": auc})
    ckpt.save(6, _state(6))  # no metrics (e.g. preemption): kept only as the latest
    ckpt.wait()
    assert ckpt.latest_step() == 6
    assert ckpt.best_step() == 3
    assert sorted(ckpt.all_steps()) == [1, 3, 6]
    restored, _ = ckpt.restore(3, _abstract(_state(0)))
    np.testing.assert_array_equal(restored["w"], np.full((4, 3), 3.0))
    ckpt.close()


def test_truncated_checkpoint_gives_a_clear_error(tmp_path):
    ckpt = checkpointing.Checkpointer(str(tmp_path), async_save=False)
    ckpt.save(1, _state(1.0), metrics={"val_roc_auc": 0.5})
    ckpt.wait()
    for root, _, files in os.walk(tmp_path / "1"):
        for name in files:
            path = os.path.join(root, name)
            if os.path.getsize(path) > 0 and "metadata" not in name:
                with open(path, "r+b") as f:
                    f.truncate(os.path.getsize(path) // 2)
    with pytest.raises(checkpointing.CheckpointError, match="could not restore checkpoint step 1"):
        ckpt.restore(1, _abstract(_state(0.0)))
