"""Models: the registry of offline models, fetching/conversion, and the Subject that analyses use."""

from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path

from ..errors import InputError, ModelUnavailableError, UnknownModelError
from .download import cached, describe_cache, fetch
from .registry import DEFAULT_MODEL, LOCAL, PRETRAINED
from .subject import Subject, from_model, from_pretrained_folder, resolve_device

__all__ = ["DEFAULT_MODEL", "PRETRAINED", "Subject", "cached", "check_model_name", "describe_cache", "fetch",
           "from_model", "list_models", "load", "resolve_device"]


def list_models() -> list[str]:
    """Names of the registered models (each also loads from any local HF folder or hub id)."""
    return list(PRETRAINED) + list(LOCAL)


def _is_hub_id(name: str) -> bool:
    return name.count("/") == 1 and not name.startswith((".", "/", "~")) and all(name.split("/"))


def check_model_name(name) -> str:
    """What ``name`` is: "registered", "folder" (a local HF folder with a config.json) or "hub" (org/name);
    InputError / UnknownModelError for anything else (an empty name, a file, a folder that is not a model)."""
    if not isinstance(name, (str, os.PathLike)) or not str(name).strip():
        raise InputError(f"no model given ({name!r}): use one of {', '.join(list_models())}, a local HF folder, "
                         "or a hub id (org/name)")
    name = str(name)
    if name in LOCAL or name in PRETRAINED:
        return "registered"
    path = Path(name).expanduser()
    if path.exists():
        if not path.is_dir():
            raise InputError(f"{name} is a file, not a model: give a registered model ({', '.join(PRETRAINED)}) "
                             "or the folder a model was saved into (save_pretrained)")
        if not (path / "config.json").is_file():
            raise InputError(f"{name} is not a model folder (it has no config.json): give a registered model "
                             f"({', '.join(PRETRAINED)}) or the folder a model was saved into (save_pretrained)")
        return "folder"
    if _is_hub_id(name):
        return "hub"
    raise UnknownModelError(
        f"unknown model {name!r}: use one of {', '.join(PRETRAINED)}, a local HF folder, or a hub id (org/name)"
    )


def load(name: str = DEFAULT_MODEL, device=None, dtype=None, fetch_missing: bool = True) -> Subject:
    """Load a registered model (fetched and converted once), a local HF folder, or a hub id, as a Subject.

    The name and the device are checked first. A registered model's cache is checked against the sizes recorded
    at conversion (DamagedModelError saying `workbench fetch NAME --force` when it does not match); a cache
    converted before those records gets them at its first successful load.
    """
    from .cache import check_cache, fix_hint, manifest, model_dir, record_files

    kind = check_model_name(name)
    device = resolve_device(device)
    if name in LOCAL:  # shipped in the repository: import the module that registers its architecture, then load
        importlib.import_module(LOCAL[name].module)
        return from_pretrained_folder(name, LOCAL[name].path, device=device, dtype=dtype,
                                      weights_note=LOCAL[name].weights_note)
    if name in PRETRAINED:
        check = check_cache(name)
        if check.state == "missing":
            if not fetch_missing:
                raise ModelUnavailableError(f"{name} is not cached: run `workbench fetch {name}` first")
            fetch(name)
            check = check_cache(name)
        check.raise_if_damaged()
        info = manifest(name) or {}
        subject = from_pretrained_folder(name, model_dir(name), device=device, dtype=dtype,
                                         weights_note=info.get("weights_note", PRETRAINED[name].weights_note),
                                         meta={"manifest": info}, fix=fix_hint(name))
        if check.state == "unverified" and record_files(name, "at first load (converted before these records)"):
            print(f"{name}: recorded the sizes and SHA-256 of its cached files (once: the cache predates these "
                  "records); later loads check them", file=sys.stderr)
        return subject
    if kind == "folder":
        folder = Path(name).expanduser()
        return from_pretrained_folder(folder.name, folder, device=device, dtype=dtype)
    try:
        return from_pretrained_folder(name, name, device=device, dtype=dtype)
    except OSError as err:
        raise ModelUnavailableError(
            f"could not load {name!r} from the model hub ({err.__class__.__name__}); "
            f"offline, use a registered model ({', '.join(PRETRAINED)}) or a local HF folder"
        ) from None
