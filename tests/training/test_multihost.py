"""Multi-process training on localhost: 2 processes x 2 CPU devices (gloo collectives) through
the real CLI, compared with 1 process x 4 devices (the same device count, so the same
reductions: Adam turns rounding differences of near-zero gradients into visible ones), and
restored into a 1-process job."""

import json
import os
import shutil
import socket
import subprocess
import sys

import numpy as np
import pytest
from restored import assert_latest_checkpoints_close

from deepfake_jax import tasks
from deepfake_jax.training import distributed

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _records(workdir: str, kind: str) -> dict[int, dict]:
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    return {r["step"]: r for r in rows if r.get("kind") == kind}


def _tiny_config(data_dir: str, mesh_data: int = -1):
    from configs import default

    config = default.get_config("tiny")
    config.data.dir = data_dir
    config.num_train_steps = 6  # as the CLI runs and the tiny recipe's 2 epochs
    config.mesh.data = mesh_data
    # SGD: updates linear in the gradients. Adam's g / sqrt(v) turns a rounding difference of
    # a near-zero gradient (gloo vs in-process reductions) into a full +-lr step.
    config.optimizer.name = "sgd"
    return config


def test_detect_reads_flags_env_slurm_and_tpu():
    assert distributed.detect(env={}).source == "single"
    spec = distributed.detect("10.0.0.1:1234", 4, 3, env={})
    assert (spec.source, spec.num_processes, spec.process_id) == ("flags", 4, 3)
    env = {"DFJ_COORDINATOR_ADDRESS": "h:1", "DFJ_NUM_PROCESSES": "2", "DFJ_PROCESS_ID": "1"}
    assert distributed.detect(env=env).source == "env"
    assert distributed.detect(env={"SLURM_JOB_ID": "7", "SLURM_NTASKS": "8"}).source == "slurm"
    assert distributed.detect(env={"SLURM_JOB_ID": "7", "SLURM_NTASKS": "1"}).source == "single"
    assert distributed.detect(env={"TPU_WORKER_HOSTNAMES": "a,b"}).source == "tpu"
    with pytest.raises(ValueError, match="missing num_processes, process_id"):
        distributed.detect("h:1", env={})
    with pytest.raises(ValueError, match="process_id=2 must be in"):
        distributed.detect("h:1", 2, 2, env={})
    with pytest.raises(ValueError, match="DFJ_NUM_PROCESSES='x' is not an integer"):
        distributed.detect(env={"DFJ_NUM_PROCESSES": "x"})


def test_two_processes_match_one_process_and_restore_into_one(tiny_dataset, tmp_path):
    import jax


    two = str(tmp_path / "two_processes")
    port = _free_port()
    # conftest's flags (same compiler settings as the reference run), 2 devices per process
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=os.environ["XLA_FLAGS"].replace(
        "--xla_force_host_platform_device_count=8", "--xla_force_host_platform_device_count=2"))
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "deepfake_jax.main", "--config", "configs/default.py:tiny",
             "--workdir", two, f"--config.data.dir={tiny_dataset}",
             "--config.num_train_steps=6", "--config.halt_after_steps=4",
             "--config.optimizer.name=sgd",
             f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2",
             f"--process_id={i}"],
            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for i in range(2)
    ]
    outputs = []
    for p in procs:
        try:
            outputs.append(p.communicate(timeout=240)[0])
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            pytest.fail("2-process run timed out")
    for p, out in zip(procs, outputs, strict=True):  # halted at step 4: exit status 75
        assert p.returncode == 75, out[-3000:]
    assert "process 1 of 2, 2 local / 4 global devices" in outputs[1]
    # Only process 0 logs the per-step lines (process 1's would repeat them).
    assert "step 4/6" in outputs[0] and "step 4/6" not in outputs[1], outputs[1][-2000:]
    data_dir = os.path.join(two, "checkpoints", "4", "data")
    written = sorted(f for f in os.listdir(data_dir) if f.endswith(".json"))
    assert written == ["process_0-of-2.json", "process_1-of-2.json"]

    # The same 6 steps in one process on 4 devices.
    one = str(tmp_path / "one_process")
    assert tasks.train_and_evaluate(_tiny_config(tiny_dataset, mesh_data=4), one)["step"] == 6
    two_train, one_train = _records(two, "train"), _records(one, "train")
    for step in (2, 4):
        np.testing.assert_allclose(two_train[step]["loss"], one_train[step]["loss"], atol=1e-5)
    np.testing.assert_allclose(_records(two, "val")[4]["val_roc_auc"],
                               _records(one, "val")[4]["val_roc_auc"], atol=1e-6)

    # The 2-process checkpoint resumes in 1 process (4 devices) and ends where `one` ended.
    resumed = str(tmp_path / "resumed")
    shutil.copytree(two, resumed)
    summary = tasks.train_and_evaluate(_tiny_config(tiny_dataset, mesh_data=4), resumed)
    assert summary["step"] == 6
    np.testing.assert_allclose(_records(resumed, "train")[6]["loss"], one_train[6]["loss"],
                               atol=1e-5)
    mesh = jax.make_mesh((4,), ("data",), devices=jax.devices()[:4],
                         axis_types=(jax.sharding.AxisType.Auto,))
    assert_latest_checkpoints_close(one, resumed, mesh, fields=("params",), atol=1e-5)
