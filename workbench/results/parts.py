"""Parts: immutable Parquet files under ``FOLDER/parts``, each a chunk of finished rows tagged with the settings hash.

A part is written once (temp file, then rename) and never replaced, so a part that exists is complete,
and a reader may cache parts by name. Each row carries the folder's settings hash (column
``settings_hash``) and a key column naming its unit of resume (a sweep cell, a NIAH test); the keys of
all readable parts whose hash matches are the finished units. Pages carry CRC checksums, verified on
read, so damage inside a part is found, not read as numbers. A part that cannot be read is moved to
``parts/damaged/`` by the writer (its units are then computed again); readers skip it with a warning.
"""

from __future__ import annotations

import os
import re
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterable, Sequence

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ..errors import WorkbenchWarning
from ..io import atomic_write

HASH_COLUMN = "settings_hash"
PART_GLOB = "part-*.parquet"
_NUMBER = re.compile(r"^part-(\d+)\.parquet$")


def read_part(path, exclude: Sequence[str] = ()) -> pa.Table:
    """One part as an Arrow table (without the columns in ``exclude``), its page checksums verified."""
    with pq.ParquetFile(path, page_checksum_verification=True) as f:
        names = f.schema_arrow.names
        return f.read(columns=[c for c in names if c not in exclude] if exclude else None)


def _read_many(paths: Sequence[Path], exclude=()) -> list[tuple[Path, pa.Table | None, Exception | None]]:
    def one(path):
        try:
            return path, read_part(path, exclude), None
        except FileNotFoundError:  # moved aside or replaced between listing and reading
            return path, None, None
        except Exception as err:  # noqa: BLE001 - pyarrow raises ArrowInvalid, OSError, ValueError... for damage
            return path, None, err
    if len(paths) < 8:
        return [one(p) for p in paths]
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        return list(pool.map(one, paths))


class PartStore:
    """The parts of one result folder; ``key`` is the column that names a unit of resume (e.g. ``cell``)."""

    def __init__(self, folder, key: str):
        self.folder = Path(folder) / "parts"
        self.key = key
        self._next: int | None = None

    @property
    def damaged_folder(self) -> Path:
        return self.folder / "damaged"

    def paths(self) -> list[Path]:
        """Every part file, in name order (= writing order)."""
        return sorted(self.folder.glob(PART_GLOB)) if self.folder.is_dir() else []

    def any(self) -> bool:
        """Whether any part exists."""
        return self.folder.is_dir() and next(self.folder.glob(PART_GLOB), None) is not None

    # ------------------------------------------------------------------ writer side (the folder's lock held)
    def remove_temp_files(self) -> list[Path]:
        """Delete temp files of a writer that died mid-write; call only while holding the folder's lock."""
        gone = [p for p in self.folder.glob(".part-*.tmp")] if self.folder.is_dir() else []
        for p in gone:
            p.unlink(missing_ok=True)
        return gone

    def scan(self, settings_hash: str) -> set:
        """The keys of every part with this settings hash, each read completely (checksums); unreadable parts are moved to ``damaged/`` (warning)."""
        done = set()
        for path, table, err in _read_many(self.paths()):
            if err is not None:
                self._set_aside(path, err)
            elif table is not None:
                ok = pc.equal(table[HASH_COLUMN], settings_hash)
                if not pc.all(ok).as_py():
                    _warn_other(path)
                    table = table.filter(ok)
                done.update(table[self.key].to_pylist())
        return done

    def write(self, rows: pd.DataFrame, settings_hash: str) -> Path:
        """Write ``rows`` (with the settings hash added) as a new part; returns its path."""
        if self._next is None:
            taken = [int(m.group(1)) for p in (*self.folder.glob(PART_GLOB), *self.damaged_folder.glob(PART_GLOB))
                     if (m := _NUMBER.match(p.name))]
            self._next = max(taken, default=0) + 1
        path = self.folder / f"part-{self._next:06d}.parquet"
        self._next += 1
        table = pa.Table.from_pandas(rows.assign(**{HASH_COLUMN: settings_hash}), preserve_index=False)
        atomic_write(path, lambda p: pq.write_table(table, p, write_page_checksum=True))
        return path

    def _set_aside(self, path: Path, err: Exception) -> None:
        self.damaged_folder.mkdir(parents=True, exist_ok=True)
        target = self.damaged_folder / path.name
        n = 1
        while target.exists():
            target = self.damaged_folder / f"{path.stem}.{n}{path.suffix}"
            n += 1
        os.replace(path, target)
        warnings.warn(f"{path} cannot be read ({_short(err)}): moved to {target}; its {self.key}s will be computed "
                      "again", WorkbenchWarning, stacklevel=3)

    # ------------------------------------------------------------------ reader side (no lock)
    def read(self, settings_hash: str, exclude: Iterable[str] = (), cache: dict | None = None) -> pa.Table | None:
        """Rows of every readable part with this settings hash, in part order, without the columns in ``exclude`` (None if no rows); damaged parts skipped with a warning.

        ``cache``: a dict kept by the caller between calls (e.g. a viewer polling a running sweep): parts
        never change, so those already read (same name, size and mtime) are taken from it.
        """
        exclude = tuple(c for c in exclude if c != HASH_COLUMN)
        cache = {} if cache is None else cache
        paths = self.paths()
        stamps = {}
        for path in paths:
            try:
                st = path.stat()
            except FileNotFoundError:
                continue
            stamps[path] = (path.name, st.st_size, st.st_mtime_ns, exclude, settings_hash)
        fresh = [p for p in stamps if stamps[p] not in cache]
        for path, table, err in _read_many(fresh, exclude):
            if err is not None:
                warnings.warn(f"{path} cannot be read ({_short(err)}): skipped; resuming the run moves it to "
                              f"{self.damaged_folder} and computes its {self.key}s again", WorkbenchWarning, stacklevel=3)
            elif table is not None:
                ok = pc.equal(table[HASH_COLUMN], settings_hash)
                if not pc.all(ok).as_py():
                    _warn_other(path)
                    table = table.filter(ok)
                cache[stamps[path]] = table.drop_columns([HASH_COLUMN])
        for key in set(cache) - set(stamps.values()):  # parts moved away since the last call
            del cache[key]
        tables = [cache[stamps[p]] for p in stamps if stamps[p] in cache]
        if not tables:
            return None
        return pa.concat_tables(tables, promote_options="default")


def _warn_other(path: Path) -> None:
    warnings.warn(f"{path} holds rows made with other settings than the folder's manifest: they are ignored "
                  "(move the file away to silence this)", WorkbenchWarning, stacklevel=4)


def _short(err: Exception) -> str:
    text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return text if len(text) <= 160 else text[:157] + "..."
