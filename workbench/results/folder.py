"""A result folder: a JSON manifest plus immutable parts, written by one process at a time, read by anyone.

Rules every analysis that writes such a folder gets from here (sweeps, NIAH grids):

- A writer holds the folder's lock (``lock.FolderLock``) from before it reads the manifest until it
  is done; a second writer, ``--resume`` included, is refused with the holder's pid and changes nothing.
- A folder with a manifest is continued only with ``resume`` and only with the same settings (same
  settings hash); a folder with parts but no manifest is refused (nothing says what made them).
- Under the lock, temp files of dead writers are deleted, every part is read, damaged parts are moved
  to ``parts/damaged/`` with a warning, and the keys of the intact parts with the manifest's hash are
  the finished units, skipped by the caller.
- Readers never lock: parts appear atomically and are never replaced, so any listing is consistent.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Sequence

import pandas as pd
import pyarrow as pa

from ..errors import InputError
from .lock import FolderLock
from .manifest import FORMAT, canonical, changed_settings, read_manifest, settings_hash, write_manifest
from .parts import PartStore


def now() -> str:
    """Local time as an ISO-8601 string (the manifest's started / finished stamps)."""
    return time.strftime("%Y-%m-%dT%H:%M:%S")


class ResultFolder:
    """The result folder at ``path``: manifest file ``manifest`` (its "kind" is ``kind``), parts keyed by column ``key``.

    ``legacy`` says what an older workbench left there (a manifest without "format", or the files in
    ``legacy_files`` without a manifest) and why it cannot be continued.
    """

    def __init__(self, path, manifest: str, kind: str, key: str, legacy: str = "", legacy_files: Sequence[str] = ()):
        self.path = Path(path)
        self.manifest_path = self.path / manifest
        self.kind = kind
        self.parts = PartStore(self.path, key)
        self.legacy = legacy
        self.legacy_files = tuple(legacy_files)

    # ------------------------------------------------------------------ reading
    def manifest(self) -> dict | None:
        """The manifest (None if absent); DamagedResultsError if it cannot be read; InputError if it is another kind's."""
        meta = read_manifest(self.manifest_path)
        if meta is not None and meta.get("kind", self.kind) != self.kind:
            raise InputError(f"{self.manifest_path} describes a {meta.get('kind')} run, not a {self.kind}")
        return meta

    @staticmethod
    def is_current(meta: dict) -> bool:
        """Whether a manifest was written in this folder format (with settings hashes), not by an older workbench."""
        return meta.get("format") == FORMAT

    def read(self, exclude: Sequence[str] = (), cache: dict | None = None) -> tuple[dict | None, pa.Table | None]:
        """(manifest, rows of the parts with the manifest's settings hash, without columns ``exclude``); refuses parts without a manifest; ``cache`` as in ``PartStore.read``."""
        meta = self.manifest()
        if meta is None:
            if self.parts.any():
                raise InputError(self._orphans())
            return None, None
        if not self.is_current(meta):
            return meta, None
        return meta, self.parts.read(meta["settings_hash"], exclude, cache)

    # ------------------------------------------------------------------ writing
    def open(self, settings: dict, *, resume: bool) -> "FolderWriter":
        """Lock the folder for writing results of ``settings`` and find what is done (a context manager); refusals are InputError / FolderInUseError."""
        if self.path.exists() and not self.path.is_dir():
            raise InputError(f"--out {self.path} is a file, not a folder: choose another --out")
        self.path.mkdir(parents=True, exist_ok=True)
        lock = FolderLock(self.path).acquire()
        try:
            meta = self.manifest()
            digest = settings_hash(settings)
            if meta is None:
                if self.parts.any():
                    raise InputError(self._orphans())
                found = [name for name in self.legacy_files if (self.path / name).exists()]
                if found:
                    raise InputError(f"{self.path} holds {', '.join(found)} but no {self.manifest_path.name}: "
                                     f"{self.legacy}; choose another --out")
            elif not self.is_current(meta):
                raise InputError(f"{self.path}: {self.legacy}; choose another --out")
            elif not resume:
                raise InputError(f"{self.path} already holds a {self.kind}: pass --resume (resume=True) to continue "
                                 "it, or choose another --out")
            elif meta.get("settings_hash") != digest:
                changed = changed_settings(meta.get("settings", {}), settings) or ["settings"]
                raise InputError(f"{self.path} holds a {self.kind} with different {', '.join(changed)}: resume it "
                                 "with the same settings, or choose another --out")
            for stale in self.path.glob(f".{self.manifest_path.name}.*.tmp"):  # left by a writer that died
                stale.unlink(missing_ok=True)
            self.parts.remove_temp_files()
            done = self.parts.scan(digest) if meta is not None else set()
            return FolderWriter(self, settings, digest, lock, meta, done)
        except BaseException:
            lock.release()
            raise

    def _orphans(self) -> str:
        return (f"{self.parts.folder} holds results but {self.manifest_path} is missing, so nothing says which "
                f"settings made them: restore {self.manifest_path.name}, or move {self.parts.folder} away (or "
                "choose another --out)")


class FolderWriter:
    """The one writer of a result folder (holds its lock): ``previous`` manifest, ``done`` keys, ``update`` and ``append``."""

    def __init__(self, folder: ResultFolder, settings: dict, digest: str, lock: FolderLock, previous: dict | None,
                 done: set):
        self.folder = folder
        self.settings_hash = digest
        self.previous = previous
        self.done = done
        self._lock = lock
        self.meta = {"format": FORMAT, "kind": folder.kind, "settings": canonical(settings),
                     "settings_hash": digest}

    def update(self, **fields) -> dict:
        """Merge ``fields`` into the manifest and write it atomically; returns the manifest."""
        self._check()
        self.meta.update(fields)
        write_manifest(self.folder.manifest_path, self.meta)
        return self.meta

    def append(self, rows: pd.DataFrame) -> Path | None:
        """Write finished rows as a new part (atomic; never replaces one); None for no rows."""
        self._check()
        if not len(rows):
            return None
        return self.folder.parts.write(rows, self.settings_hash)

    def close(self) -> None:
        """Release the folder's lock."""
        self._lock.release()

    def _check(self) -> None:
        if not self._lock.held:
            raise RuntimeError(f"the writer of {self.folder.path} is closed")

    def __enter__(self) -> "FolderWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
