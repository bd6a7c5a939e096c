"""Models: the registry of offline models, fetching/conversion, and the Subject that analyses use."""

from __future__ import annotations

import importlib
from pathlib import Path

from ..errors import ModelUnavailableError, UnknownModelError
from .download import cached, describe_cache, fetch
from .registry import DEFAULT_MODEL, LOCAL, PRETRAINED
from .subject import Subject, from_model, from_pretrained_folder

__all__ = ["DEFAULT_MODEL", "PRETRAINED", "Subject", "cached", "describe_cache", "fetch", "from_model",
           "list_models", "load"]


def list_models() -> list[str]:
    """Names of the registered models (each also loads from any local HF folder or hub id)."""
    return list(PRETRAINED) + list(LOCAL)


def load(name: str = DEFAULT_MODEL, device=None, dtype=None, fetch_missing: bool = True) -> Subject:
    """Load a registered model (fetched and converted once), a local HF folder, or a hub id, as a Subject."""
    from .cache import manifest, model_dir

    if name in LOCAL:  # shipped in the repository: import the module that registers its architecture, then load
        importlib.import_module(LOCAL[name].module)
        return from_pretrained_folder(name, LOCAL[name].path, device=device, dtype=dtype,
                                      weights_note=LOCAL[name].weights_note)
    if name in PRETRAINED:
        if not cached(name):
            if not fetch_missing:
                raise ModelUnavailableError(f"{name} is not cached: run `workbench fetch {name}` first")
            fetch(name)
        info = manifest(name) or {}
        return from_pretrained_folder(name, model_dir(name), device=device, dtype=dtype,
                                      weights_note=info.get("weights_note", PRETRAINED[name].weights_note),
                                      meta={"manifest": info})
    if Path(name).expanduser().is_dir():
        folder = Path(name).expanduser()
        return from_pretrained_folder(folder.name, folder, device=device, dtype=dtype)
    if "/" in name and not name.startswith((".", "/")):
        try:
            return from_pretrained_folder(name, name, device=device, dtype=dtype)
        except OSError as err:
            raise ModelUnavailableError(
                f"could not load {name!r} from the model hub ({err.__class__.__name__}); "
                f"offline, use a registered model ({', '.join(PRETRAINED)}) or a local HF folder"
            ) from None
    raise UnknownModelError(
        f"unknown model {name!r}: use one of {', '.join(PRETRAINED)}, a local HF folder, or a hub id (org/name)"
    )
