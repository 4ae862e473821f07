"""The one JSON writer: reports, metrics and manifests are written whole or not at all."""

from __future__ import annotations

import json
import os
from typing import Any


def write_json(obj: Any, path: str, *, sort_keys: bool = False, indent: int = 2) -> str:
    """Writes `obj` to `path` through a temporary file, flushed to disk and renamed over
    `path` (a crash never leaves half a file); creates the folder. Returns `path`."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=indent, sort_keys=sort_keys)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path
