"""A result folder's manifest (a JSON file: kind, settings, their hash, status) and the settings hash.

The settings hash ties every part of a folder to the settings that made it: it is stored in the
manifest and in every row of every part, and rows whose hash differs from the manifest's are never
returned or resumed.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from ..errors import DamagedResultsError
from ..io import atomic_write_json

FORMAT = 2  # 1: one Parquet file per sweep cell and no settings hash (workbench before the result-folder layer)


def canonical(settings: dict) -> dict:
    """``settings`` as JSON would give it back (tuples as lists, keys as strings): what a manifest stores."""
    return json.loads(json.dumps(settings, sort_keys=True, default=str))


def settings_hash(settings: dict) -> str:
    """SHA-256 of the settings as canonical JSON (sorted keys, JSON types), first 16 hex digits: equal settings, equal hash."""
    text = json.dumps(canonical(settings), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def changed_settings(old: dict, new: dict) -> list[str]:
    """The top-level keys whose values differ between two settings dicts (compared as canonical JSON)."""
    old, new = canonical(old), canonical(new)
    return sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))


def read_manifest(path) -> dict | None:
    """The JSON object in ``path`` (None if there is no such file); DamagedResultsError naming the file if it cannot be read."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as err:
        raise DamagedResultsError(_damaged(path, err)) from None
    try:
        meta = json.loads(text)
    except ValueError as err:
        raise DamagedResultsError(_damaged(path, f"not valid JSON: {err}")) from None
    if not isinstance(meta, dict):
        raise DamagedResultsError(_damaged(path, "not a JSON object"))
    return meta


def _damaged(path: Path, why) -> str:
    return (f"{path} is damaged ({why}): it is the manifest that says which settings made the results in "
            f"{path.parent}, so they cannot be read or continued without it. Restore it from a copy, or move "
            f"{path.parent} aside and run again into a new --out")


def write_manifest(path, meta: dict) -> Path:
    """Write the manifest atomically (temp file, then rename)."""
    return atomic_write_json(path, meta)


def data_digest(*arrays) -> str:
    """SHA-1 of arrays' shapes, dtypes and bytes (tensors or numpy; None skipped): ties settings to the exact inputs."""
    h = hashlib.sha1()
    for a in arrays:
        if a is None:
            continue
        a = np.ascontiguousarray(a.detach().cpu().numpy() if hasattr(a, "detach") else np.asarray(a))
        h.update(f"{a.dtype.str}{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()
