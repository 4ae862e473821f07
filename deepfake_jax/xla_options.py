"""XLA:CPU options the project sets, through XLA_FLAGS, before JAX starts its CPU backend.

jaxlib 0.10 runs convolutions through YNNPACK by default; XLA's own (Eigen) convolutions are
2-2.5x faster in forward+gradient on a 2-core AVX-512 CPU, so YNNPACK is kept for matmuls only
(docs/cpu_benchmarks.md, `bench/models.py`). XLA reads XLA_FLAGS once, when the first backend
starts: `import deepfake_jax` sets them, so anything that imports the package before its first
JAX computation gets them. A flag already named in XLA_FLAGS is left as the user set it.
"""

from __future__ import annotations

import os

CPU_FLAGS = {"xla_cpu_experimental_ynn_fusion_type": "-individual_convolution"}
# An unknown name in XLA_FLAGS aborts XLA, so the flags go only to jaxlib versions they were
# checked on.
CHECKED_JAXLIB = ((0, 10),)


def _jaxlib_version() -> tuple[int, int] | None:
    try:  # jaxlib.version is what jax reads too: cheaper than importlib.metadata at start-up
        from jaxlib import version

        major, minor = version.__version__.split(".")[:2]
        return int(major), int(minor)
    except (ImportError, ValueError):
        return None


def set_cpu_flags(environ=os.environ, jaxlib_version: tuple[int, int] | None = None
                  ) -> list[str]:
    """Appends each of CPU_FLAGS that XLA_FLAGS does not name yet; returns the added ones."""
    version = jaxlib_version or _jaxlib_version()
    if version not in CHECKED_JAXLIB:
        return []
    current = environ.get("XLA_FLAGS", "")
    added = [f"--{name}={value}" for name, value in CPU_FLAGS.items()
             if f"--{name}=" not in current]
    if added:
        environ["XLA_FLAGS"] = " ".join([current, *added]).strip()
    return added
