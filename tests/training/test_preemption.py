"""The kill matrix: SIGKILL and SIGTERM during training and during a checkpoint save, each
followed by a rerun of the same command; the run ends with the weights, metrics and
metrics.jsonl rows of an uninterrupted run.

One run is interrupted four times in a row. SIGKILL (the process gone, nothing saved: the
rerun resumes from the checkpoint before) and the halted exit status need a process of their
own (`tests/kill_driver.py`); SIGTERM during training, the resume and the end run in this
process (a preempted job: the run saves and returns `halted`)."""

import json
import os
import signal
import subprocess
import sys

import numpy as np
from restored import assert_latest_checkpoints_close

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
HALTED_EXIT_STATUS = 75  # deepfake_jax.main.HALTED_EXIT_STATUS (its flags clash with evaluate's)

# (KILL_AT of tests/kill_driver.py, exit status), run by the command line in this order
KILLS = (("train:3:SIGKILL", -signal.SIGKILL),   # mid-training, after checkpoint 2
         ("save:4:SIGKILL", -signal.SIGKILL),    # checkpoint 4 half written
         ("save:4:SIGTERM", HALTED_EXIT_STATUS))  # during a save: it completes, then halts


def test_kill_matrix_ends_where_an_uninterrupted_run_ends(trained_workdir, tiny_dataset, tmp_path,
                                                          monkeypatch):
    import jax

    from configs import default
    from deepfake_jax import tasks
    from deepfake_jax.training import metric_writer

    reference_dir, reference = trained_workdir
    workdir = str(tmp_path / "interrupted")
    # Logging every step (the reference logs every 2nd) changes nothing but the rows written.
    args = ["--config", "configs/default.py:tiny", "--workdir", workdir,
            f"--config.data.dir={tiny_dataset}", "--config.log_every_steps=1"]
    env = {**os.environ, "DEEPFAKE_JAX_NO_HUGE_PAGES": "1"}
    for spec, expected in KILLS:
        run = subprocess.run([sys.executable, os.path.join(ROOT, "tests", "kill_driver.py"),
                              *args], cwd=ROOT, env={**env, "KILL_AT": spec},
                             capture_output=True, text=True, timeout=600)
        assert run.returncode == expected, (spec, run.stderr[-3000:])
    assert "halted (SIGTERM) at step 4" in run.stderr
    assert "rerun the same command to resume" in run.stderr

    # SIGTERM mid-training (step 5, in this process): checkpoint 5 saved, `halted` returned
    config = default.get_config("tiny")
    config.data.dir = tiny_dataset
    config.log_every_steps = 1
    write = metric_writer.MetricWriter.write

    def write_then_sigterm(self, step, kind, values):
        write(self, step, kind, values)
        if kind == "train" and step == 5:
            os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(metric_writer.MetricWriter, "write", write_then_sigterm)
    halted = tasks.train_and_evaluate(config, workdir)
    assert halted["halted"] == "SIGTERM" and halted["step"] == 5, halted
    assert not os.path.exists(os.path.join(workdir, "eval"))  # stopped before the end
    monkeypatch.undo()

    resumed = tasks.train_and_evaluate(config, workdir)
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

    # metrics.jsonl: each row once, although steps 3-4 ran three times and step 5 twice
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        rows = [(r["kind"], r["step"]) for r in map(json.loads, f)]
    assert len(rows) == len(set(rows)), sorted(rows)
    assert sorted(s for k, s in rows if k == "train") == [1, 2, 3, 4, 5, 6]
    assert sorted(s for k, s in rows if k == "val") == [4, 6]
