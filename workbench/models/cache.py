"""Where converted models live: ``$WORKBENCH_HOME`` (default ``~/.cache/workbench``)/models/NAME."""

from __future__ import annotations

import json
import os
from pathlib import Path

MANIFEST = "workbench-manifest.json"


def home() -> Path:
    """The workbench cache root: ``$WORKBENCH_HOME`` or ``~/.cache/workbench``."""
    return Path(os.environ.get("WORKBENCH_HOME") or Path.home() / ".cache" / "workbench").expanduser()


def model_dir(name: str) -> Path:
    """The cached safetensors + tokenizer folder of a registered model (may not exist yet)."""
    return home() / "models" / name


def manifest(name: str) -> dict | None:
    """The manifest written when the model was converted, or None if it is not cached."""
    path = model_dir(name) / MANIFEST
    if not path.is_file():
        return None
    return json.loads(path.read_text())
