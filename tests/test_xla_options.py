import os
import subprocess
import sys

import pytest

from deepfake_jax import xla_options

FLAG = "--xla_cpu_experimental_ynn_fusion_type"
CHECKED = xla_options.CHECKED_JAXLIB[0]


def test_appends_the_flags_once_and_keeps_the_users_value():
    env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
    assert xla_options.set_cpu_flags(env, CHECKED) == [f"{FLAG}=-individual_convolution"]
    assert env["XLA_FLAGS"] == (
        f"--xla_force_host_platform_device_count=8 {FLAG}=-individual_convolution")
    assert xla_options.set_cpu_flags(env, CHECKED) == []  # already named: nothing doubled
    mine = {"XLA_FLAGS": f"{FLAG}=+individual_convolution"}
    assert xla_options.set_cpu_flags(mine, CHECKED) == []
    assert mine["XLA_FLAGS"] == f"{FLAG}=+individual_convolution"
    empty: dict[str, str] = {}
    xla_options.set_cpu_flags(empty, CHECKED)
    assert empty["XLA_FLAGS"] == f"{FLAG}=-individual_convolution"


def test_unchecked_jaxlib_gets_no_flags():
    # XLA aborts on a flag name it does not know: versions not checked get nothing
    env = {"XLA_FLAGS": "--a=1"}
    assert xla_options.set_cpu_flags(env, (CHECKED[0], CHECKED[1] + 1)) == []
    assert env == {"XLA_FLAGS": "--a=1"}


_COMPILED_CONV = """
import sys
if sys.argv[1] == "package":
    import deepfake_jax  # noqa: F401
import jax, jax.numpy as jnp
conv = jax.jit(lambda x, w: jax.lax.conv_general_dilated(
    x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")))
print(conv.lower(jnp.ones((2, 32, 32, 64)), jnp.ones((3, 3, 64, 64))).compile().as_text())
"""


def _compiled_conv(mode: str, xla_flags: str) -> str:
    env = dict(os.environ, XLA_FLAGS=xla_flags, JAX_PLATFORMS="cpu")
    return subprocess.run([sys.executable, "-c", _COMPILED_CONV, mode], env=env, check=True,
                          capture_output=True, text=True, timeout=120).stdout


@pytest.mark.skipif(xla_options.set_cpu_flags({}) == [],
                    reason="the installed jaxlib is not one the flags were checked on")
def test_importing_the_package_keeps_convolutions_out_of_ynnpack():
    # jaxlib's default ("+" adds to the default list: the default itself) runs the conv in a
    # YNNPACK fusion; after `import deepfake_jax` it is XLA's own convolution
    assert "ynn_fusion" in _compiled_conv("jax", f"{FLAG}=+individual_convolution")
    compiled = _compiled_conv("package", "")
    assert "ynn_fusion" not in compiled and "convolution(" in compiled
