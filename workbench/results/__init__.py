"""Result folders shared by the analyses that write many results (sweeps, NIAH grids): lock, manifest, settings hash, parts."""

from .folder import FolderWriter, ResultFolder, now
from .lock import FolderLock, lock_holder
from .manifest import FORMAT, canonical, changed_settings, data_digest, read_manifest, settings_hash, write_manifest
from .parts import HASH_COLUMN, PartStore, read_part

__all__ = ["FORMAT", "FolderLock", "FolderWriter", "HASH_COLUMN", "PartStore", "ResultFolder", "canonical",
           "changed_settings", "data_digest", "lock_holder", "now", "read_manifest", "read_part", "settings_hash", "write_manifest"]
