"""Run the training process with glibc's malloc on transparent huge pages.

XLA:CPU allocates each step's temporaries (gigabytes for a 224-px CNN train step) with malloc,
which maps them fresh every step: 4 KiB page faults, each zeroed by the kernel. Measured on
EfficientNet-Lite0 (batch 16, 2 cores): 836k page faults and 2.2 s of kernel time per step;
with `GLIBC_TUNABLES=glibc.malloc.hugetlb=1` (glibc >= 2.35: malloc madvises its mappings for
transparent huge pages) 3.4k faults, 0.8 s. Numerics are unchanged. glibc reads tunables only
at start-up, so the entry point re-executes itself once with the variable set.
"""

from __future__ import annotations

import os
import platform
import sys

TUNABLE = "glibc.malloc.hugetlb=1"
_OPT_OUT = "DEEPFAKE_JAX_NO_HUGE_PAGES"  # set to anything: never re-execute


def _glibc_supports_it() -> bool:
    lib, version = platform.libc_ver()
    if lib != "glibc" or not version:
        return False
    major, minor = (int(v) for v in version.split(".")[:2])
    return (major, minor) >= (2, 35)


def _thp_allows_madvise() -> bool:
    try:
        with open("/sys/kernel/mm/transparent_hugepage/enabled") as f:
            return "[never]" not in f.read()
    except OSError:
        return False


def reexec_with_huge_pages() -> None:
    """Re-executes this process with the tunable set, once; a no-op where it cannot help."""
    tunables = os.environ.get("GLIBC_TUNABLES", "")
    if (TUNABLE in tunables or os.environ.get(_OPT_OUT) or not sys.platform.startswith("linux")
            or not _glibc_supports_it() or not _thp_allows_madvise()):
        return
    os.environ["GLIBC_TUNABLES"] = f"{tunables}:{TUNABLE}" if tunables else TUNABLE
    os.environ[_OPT_OUT] = "1"  # whatever happens, the new process does not try again
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, sys.orig_argv)
