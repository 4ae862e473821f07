"""Test helper: compare the latest checkpoints of two training runs leaf by leaf."""

import jax
import numpy as np


def assert_latest_checkpoints_close(workdir: str, reference_dir: str, mesh, *, fields=("params",),
                                    atol: float = 1e-6) -> None:
    """Restores both runs' latest checkpoint (with `workdir`'s run config) on `mesh` and
    asserts every leaf of the given TrainState fields matches to `atol`."""
    from deepfake_jax import runs

    config = runs.load_run_config(workdir)
    _, state, _ = runs.restore_weights(config, workdir, "latest", mesh)
    _, ref_state, _ = runs.restore_weights(config, reference_dir, "latest", mesh)
    got = jax.tree.leaves([getattr(state, f) for f in fields])
    want = jax.tree.leaves([getattr(ref_state, f) for f in fields])
    assert len(got) == len(want) > 0, (len(got), len(want))
    for i, (a, b) in enumerate(zip(got, want, strict=True)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=atol,
                                   err_msg=f"leaf {i} of {fields}")
