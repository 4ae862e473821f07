"""SIGTERM mid-run (a preempted job): the run saves and exits; the restart ends where an
uninterrupted run ends."""

import json
import os
import signal
import threading
import time

import numpy as np
from restored import assert_latest_checkpoints_close


def _signal_after_first_log_line(workdir: str, stop: threading.Event) -> None:
    path = os.path.join(workdir, "metrics.jsonl")
    while not stop.is_set():
        if os.path.exists(path) and '"train"' in open(path).read():
            os.kill(os.getpid(), signal.SIGTERM)
            return
        time.sleep(0.05)


def test_sigterm_saves_and_the_restart_matches_an_uninterrupted_run(trained_workdir, tiny_dataset,
                                                                     tmp_path):
    import jax

    from configs import default
    from deepfake_jax import train

    reference_dir, reference = trained_workdir
    config = default.get_config("tiny")
    config.data.dir = tiny_dataset
    workdir = str(tmp_path / "preempted")

    stop = threading.Event()
    watcher = threading.Thread(target=_signal_after_first_log_line, args=(workdir, stop))
    watcher.start()
    try:
        halted = train.train_and_evaluate(config, workdir)
    finally:
        stop.set()
        watcher.join()
    assert halted["halted"] == "SIGTERM", halted
    assert 0 < halted["step"] < reference["step"]
    assert not os.path.exists(os.path.join(workdir, "eval"))  # stopped before the end

    resumed = train.train_and_evaluate(config, workdir)
    assert resumed["step"] == reference["step"]
    for split in ("valid", "test"):
        with open(os.path.join(workdir, "eval", split, "metrics.json")) as f:
            got = json.load(f)
        want = reference["eval"][split]
        for key in ("roc_auc", "log_loss", "threshold"):
            np.testing.assert_allclose(got[key], want[key], atol=1e-6, err_msg=f"{split} {key}")

    mesh = jax.make_mesh((8,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
    assert_latest_checkpoints_close(workdir, reference_dir, mesh, fields=("ema_params",),
                                    atol=1e-6)
