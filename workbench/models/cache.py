"""Where converted models live: ``$WORKBENCH_HOME`` (default ``~/.cache/workbench``)/models/NAME, and their checks.

The manifest written at conversion records each converted file's size and SHA-256 (``files``). Every load
checks the sizes (a stat per file); ``workbench models --verify`` checks the hashes. A cache converted before
these records existed is "unverified": it loads as before, and its first successful load records them.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import DamagedModelError

MANIFEST = "workbench-manifest.json"
# what a converted folder cannot load without (checked when the manifest has no file records)
REQUIRED_FILES = ("config.json", "tokenizer.json")
WEIGHTS_FILES = ("model.safetensors", "model.safetensors.index.json")


def home() -> Path:
    """The workbench cache root: ``$WORKBENCH_HOME`` or ``~/.cache/workbench``."""
    return Path(os.environ.get("WORKBENCH_HOME") or Path.home() / ".cache" / "workbench").expanduser()


def model_dir(name: str) -> Path:
    """The cached safetensors + tokenizer folder of a registered model (may not exist yet)."""
    return home() / "models" / name


def fix_hint(name: str) -> str:
    """What a user runs to replace a damaged cache of ``name``."""
    return f"run `workbench fetch {name} --force` to convert it again"


def manifest(name: str) -> dict | None:
    """The manifest written when the model was converted, or None if it is not cached; DamagedModelError if unreadable."""
    path = model_dir(name) / MANIFEST
    if not path.is_file():
        return None
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as err:
        raise DamagedModelError(f"the cached {name} is damaged: {path} is not valid JSON ({err}): {fix_hint(name)}") from None
    if not isinstance(info, dict):
        raise DamagedModelError(f"the cached {name} is damaged: {path} holds no manifest: {fix_hint(name)}")
    return info


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    """Hex SHA-256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def file_records(folder: Path) -> dict[str, dict]:
    """{file name: {"size": bytes, "sha256": hex}} of every file of a converted folder except the manifest."""
    return {p.name: {"size": p.stat().st_size, "sha256": sha256_file(p)}
            for p in sorted(Path(folder).iterdir())
            if p.is_file() and p.name != MANIFEST and not p.name.startswith(".")}


@dataclass
class CacheCheck:
    """The state of one registered model's cache: "missing", "ok" (sizes match), "verified" (hashes match too),
    "unverified" (converted before size/hash records; the files a model needs are there) or "damaged"."""

    name: str
    state: str
    problems: list[str] = field(default_factory=list)

    @property
    def usable(self) -> bool:
        return self.state in ("ok", "verified", "unverified")

    def message(self) -> str:
        """One line saying what is wrong and what to run."""
        return f"the cached {self.name} in {model_dir(self.name)} is damaged ({'; '.join(self.problems)}): {fix_hint(self.name)}"

    def raise_if_damaged(self) -> "CacheCheck":
        if self.state == "damaged":
            raise DamagedModelError(self.message())
        return self


def check_cache(name: str, hashes: bool = False) -> CacheCheck:
    """Compare the cached files of ``name`` with the manifest's records: sizes always, SHA-256 if ``hashes``."""
    folder = model_dir(name)
    try:
        info = manifest(name)
    except DamagedModelError:
        return CacheCheck(name, "damaged", [f"{MANIFEST} is not valid JSON"])
    if info is None:
        return CacheCheck(name, "missing")
    records = info.get("files")
    problems = []
    if not isinstance(records, dict):
        for required in REQUIRED_FILES:
            if not (folder / required).is_file() or (folder / required).stat().st_size == 0:
                problems.append(f"{required} is missing")
        if not any((folder / w).is_file() and (folder / w).stat().st_size > 0 for w in WEIGHTS_FILES):
            problems.append(f"{WEIGHTS_FILES[0]} is missing")
        return CacheCheck(name, "damaged" if problems else "unverified", problems)
    for file, record in records.items():
        path = folder / file
        if not path.is_file():
            problems.append(f"{file} is missing")
        elif path.stat().st_size != record.get("size"):
            problems.append(f"{file} has {path.stat().st_size} bytes, {record.get('size')} were written")
        elif hashes and sha256_file(path) != record.get("sha256"):
            problems.append(f"{file} does not have the SHA-256 recorded at conversion")
    if problems:
        return CacheCheck(name, "damaged", problems)
    return CacheCheck(name, "verified" if hashes else "ok")


def record_files(name: str, how: str) -> bool:
    """Add the size/SHA-256 records of ``name``'s cached files to its manifest (atomic); False if it cannot be written."""
    from ..io import atomic_write_json

    info = manifest(name) or {}
    try:
        atomic_write_json(model_dir(name) / MANIFEST, {**info, "files": file_records(model_dir(name)), "files_recorded": how})
    except OSError:
        return False
    return True
