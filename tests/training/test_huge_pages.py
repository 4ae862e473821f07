"""The training entry point re-executes itself once with glibc's huge-page malloc tunable."""

import os
import subprocess
import sys

from deepfake_jax.training import huge_pages

SCRIPT = ("import os, sys; from deepfake_jax.training import huge_pages; "
          "print('start', flush=True); huge_pages.reexec_with_huge_pages(); "
          "print(os.environ.get('GLIBC_TUNABLES', ''))")


def _run(env):
    out = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True,
                         text=True, check=True, timeout=60)
    return out.stdout.split()


def test_reexecutes_once_with_the_tunable_where_glibc_has_it():
    env = {k: v for k, v in os.environ.items()
           if k not in ("GLIBC_TUNABLES", "DEEPFAKE_JAX_NO_HUGE_PAGES")}
    env["GLIBC_TUNABLES"] = "glibc.malloc.check=0"  # a user's own tunables are kept
    lines = _run(env)
    if huge_pages._glibc_supports_it() and huge_pages._thp_allows_madvise():
        assert lines == ["start", "start", "glibc.malloc.check=0:" + huge_pages.TUNABLE]
    else:
        assert lines == ["start", "glibc.malloc.check=0"]


def test_opt_out_and_already_set_do_nothing():
    env = dict(os.environ, DEEPFAKE_JAX_NO_HUGE_PAGES="1", GLIBC_TUNABLES="")
    assert _run(env) == ["start"]
    env = {k: v for k, v in os.environ.items() if k != "DEEPFAKE_JAX_NO_HUGE_PAGES"}
    env["GLIBC_TUNABLES"] = huge_pages.TUNABLE
    assert _run(env) == ["start", huge_pages.TUNABLE]
