"""The command line: bad configs and overrides fail in one readable message, before any work."""

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _main(*args, tmp_path):
    return subprocess.run(
        [sys.executable, "-m", "deepfake_jax.main", *args], cwd=ROOT, capture_output=True,
        text=True, timeout=120, env={**os.environ, "JAX_PLATFORMS": "cpu"},
    )


@pytest.mark.parametrize("args,expected", [
    (["--config.input.nonexistent=3"], "nonexistent"),
    (["--config.input.batch_size=abc"], "invalid literal"),
])
def test_bad_override_is_reported(tmp_path, args, expected):
    run = _main("--config", "configs/default.py", "--workdir", str(tmp_path / "w"), *args,
                tmp_path=tmp_path)
    assert run.returncode != 0
    assert "error in the command line or config" in run.stderr and expected in run.stderr
    assert not os.path.exists(tmp_path / "w"), "nothing is written before the config is valid"


def test_missing_config_file_and_bad_config_argument(tmp_path):
    run = _main("--config", "configs/nope.py", "--workdir", str(tmp_path), tmp_path=tmp_path)
    assert run.returncode != 0 and "configs/nope.py" in run.stderr
    run = _main("--config", "configs/default.py:huge", "--workdir", str(tmp_path),
                tmp_path=tmp_path)
    assert run.returncode != 0 and "unknown argument 'huge'" in run.stderr
