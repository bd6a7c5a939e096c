"""Issue 12, problem 5: a damaged model cache is a clear error that says `workbench fetch NAME --force`.

Each test copies a tiny random model into a temporary WORKBENCH_HOME under a registered name (the shared cache
in ~/.cache is never touched) and damages the copy as a user's disk or a killed process would.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

import workbench as wb
from workbench.cli import main
from workbench.errors import DamagedModelError, ModelUnavailableError
from workbench.models import describe_cache, fetch
from workbench.models.cache import MANIFEST, check_cache, file_records, manifest, model_dir

NAME = "smollm2-135m"  # a registered name; the folder behind it is a tiny random model
ROOT = Path(__file__).resolve().parents[2]


def install(home: Path, source: Path, records: bool = True) -> Path:
    """Copy ``source`` into ``home`` as the cached NAME, with a manifest as `workbench fetch` writes it (``records``:
    with the size/SHA-256 records of this version; without: as converted before them)."""
    folder = home / "models" / NAME
    shutil.copytree(source, folder)
    info = {"name": NAME, "weights_note": "tiny random test model"}
    if records:
        info.update(files=file_records(folder), files_recorded="at conversion")
    (folder / MANIFEST).write_text(json.dumps(info))
    return folder


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("WORKBENCH_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def one_line_error(capsys, argv) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("workbench: error: ") and "\n" not in err, err
    return err


def models_listing(capsys, *flags) -> tuple[int, str]:
    code = main(["models", *flags])
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def weights_region(path: Path) -> tuple[int, int]:
    """(start, end) byte offsets of the tensor data in a safetensors file (after its JSON header)."""
    header = int.from_bytes(path.read_bytes()[:8], "little")
    return 8 + header, path.stat().st_size


def test_intact_cache_with_records_loads_and_is_listed_cached(home, tiny_folder, capsys):
    install(home, tiny_folder)
    assert check_cache(NAME).state == "ok" and check_cache(NAME, hashes=True).state == "verified"
    subject = wb.load(NAME, device="cpu")
    assert subject.n_layers == 2
    code, text = models_listing(capsys, "--verify")
    assert code == 0 and "SHA-256 verified" in text


def test_truncated_weights_are_a_clear_error_and_not_listed_cached(home, tiny_folder, capsys, monkeypatch):
    folder = install(home, tiny_folder)
    os.truncate(folder / "model.safetensors", 100)
    with pytest.raises(DamagedModelError, match=rf"model.safetensors has 100 bytes.*workbench fetch {NAME} --force"):
        wb.load(NAME, device="cpu")
    err = one_line_error(capsys, ["pattern", "--model", NAME, "--prompt", "w1 w2", "--head", "0.0",
                                  "--out", str(home / "p.html")])
    assert f"workbench fetch {NAME} --force" in err and "Traceback" not in err
    code, text = models_listing(capsys)
    row = next(r for r in describe_cache() if r["name"] == NAME)
    assert row["state"] == "damaged" and not row["cached"]
    assert code == 2 and "DAMAGED" in text and "cached (" not in text
    # a plain `fetch` (no --force) does not keep the damaged copy: it starts converting again (offline here)
    def offline(spec, work):
        raise ModelUnavailableError("offline (test)")
    monkeypatch.setattr("workbench.models.download._assemble_gguf", offline)
    with pytest.raises(ModelUnavailableError, match="offline"):
        fetch(NAME)


def test_truncated_weights_of_an_old_cache_without_records(home, tiny_folder):
    folder = install(home, tiny_folder, records=False)
    os.truncate(folder / "model.safetensors", 100)
    with pytest.raises(DamagedModelError, match=rf"cannot load the model.*workbench fetch {NAME} --force"):
        wb.load(NAME, device="cpu")


def test_random_bytes_inside_the_weights_fail_the_finite_logits_probe(home, tiny_folder, capsys):
    import numpy as np

    folder = install(home, tiny_folder)
    weights = folder / "model.safetensors"
    start, end = weights_region(weights)
    data = bytearray(weights.read_bytes())
    middle = (start + end) // 2
    data[middle:middle + 4096] = np.random.default_rng(0).bytes(4096)
    weights.write_bytes(bytes(data))  # same size: only the probe (and --verify) can tell
    assert check_cache(NAME).state == "ok"
    with pytest.raises(DamagedModelError, match=rf"non-finite logits.*workbench fetch {NAME} --force"):
        wb.load(NAME, device="cpu")
    code, text = models_listing(capsys, "--verify")
    assert code == 2 and "does not have the SHA-256 recorded at conversion" in text


def test_verify_finds_a_changed_byte_that_still_loads(home, tiny_folder, capsys):
    folder = install(home, tiny_folder)
    weights = folder / "model.safetensors"
    start, _ = weights_region(weights)
    data = bytearray(weights.read_bytes())
    data[start] ^= 0x01  # lowest mantissa bit of the first float: finite, loads, only the hash differs
    weights.write_bytes(bytes(data))
    wb.load(NAME, device="cpu")
    code, text = models_listing(capsys)
    assert code == 0 and "cached" in text
    code, text = models_listing(capsys, "--verify")
    assert code == 2 and "DAMAGED" in text and f"workbench fetch {NAME} --force" in text


@pytest.mark.parametrize("missing", ["config.json", "tokenizer.json"])
@pytest.mark.parametrize("records", [True, False])
def test_deleted_config_or_tokenizer(home, tiny_folder, capsys, missing, records):
    folder = install(home, tiny_folder, records=records)
    (folder / missing).unlink()
    with pytest.raises(DamagedModelError, match=rf"{missing} is missing.*workbench fetch {NAME} --force"):
        wb.load(NAME, device="cpu")
    assert not check_cache(NAME).usable
    code, text = models_listing(capsys)
    assert code == 2 and f"{missing} is missing" in text


def test_old_cache_without_records_loads_and_records_them_once(home, tiny_folder, capsys):
    folder = install(home, tiny_folder, records=False)
    code, text = models_listing(capsys)
    assert code == 0 and "unverified" in text
    subject = wb.load(NAME, device="cpu")  # loading an old cache keeps working
    assert subject.n_layers == 2
    info = manifest(NAME)
    assert info["files"] == file_records(folder) and "first load" in info["files_recorded"]
    assert info["weights_note"] == "tiny random test model"  # the rest of the manifest is kept
    assert check_cache(NAME, hashes=True).state == "verified"
    code, text = models_listing(capsys, "--verify")
    assert code == 0 and "SHA-256 verified" in text


def test_verify_records_an_old_cache_by_loading_it(home, tiny_folder, capsys):
    install(home, tiny_folder, records=False)
    code, text = models_listing(capsys, "--verify")
    assert code == 0 and "SHA-256 verified" in text and "files" in manifest(NAME)


@pytest.mark.slow  # a second interpreter imports torch + transformers: ~10 s idle, ~35 s on a loaded 2-core machine
def test_fetch_killed_with_sigkill_leaves_a_temp_folder_that_the_next_fetch_removes(home, tmp_path, monkeypatch):
    script = (
        "import time, workbench.models.download as d\n"
        "def slow(spec, work):\n"
        "    (work / 'partial.gguf').write_bytes(b'x' * 100000)\n"
        "    print('downloading', flush=True)\n"
        "    time.sleep(600)\n"
        "d._assemble_gguf = slow\n"
        f"d.fetch({NAME!r})\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT), "WORKBENCH_HOME": str(home), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, env=env, text=True)
    try:
        assert proc.stdout.readline().strip() == "downloading"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    left = [p for p in (home / "models").iterdir() if p.name.startswith(f".{NAME}.")]
    assert len(left) == 1 and (left[0] / "partial.gguf").is_file()
    # a temp folder whose writer is alive (this process) is kept
    alive = home / "models" / f".{NAME}.alive"
    alive.mkdir()
    from workbench.models.download import WRITER, writer_info

    (alive / WRITER).write_text(json.dumps(writer_info()))

    def offline(spec, work):
        raise ModelUnavailableError("offline (test)")
    monkeypatch.setattr("workbench.models.download._assemble_gguf", offline)
    with pytest.raises(ModelUnavailableError):
        fetch(NAME)
    assert not left[0].exists() and alive.is_dir()
    assert sorted(p.name for p in (home / "models").iterdir()) == [alive.name]  # the failed fetch cleaned up too


def test_empty_name_and_non_model_folders_are_refused(tmp_path, monkeypatch):
    from workbench.errors import InputError

    monkeypatch.chdir(tmp_path)
    with pytest.raises(InputError, match="no model given"):
        wb.load("")  # never the current folder
    (tmp_path / "notes").mkdir()
    with pytest.raises(InputError, match="not a model folder"):
        wb.load(str(tmp_path / "notes"))
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(InputError, match="is a file"):
        wb.load(str(tmp_path / "file.txt"))


def test_a_local_folder_with_damaged_weights_names_the_folder(tmp_path, tiny_folder):
    folder = tmp_path / "copy"
    shutil.copytree(tiny_folder, folder)
    os.truncate(folder / "model.safetensors", 100)
    with pytest.raises(DamagedModelError, match=f"cannot load the model in {folder}"):
        wb.load(str(folder), device="cpu")
    assert model_dir(NAME) != folder
