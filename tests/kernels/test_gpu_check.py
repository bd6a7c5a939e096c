"""benchmarks/gpu_check.py: a part that fails or runs out of time is a row in the table and the others run; the
results go into RESULTS.md; --smoke runs the whole check on the CPU at tiny sizes (slow: ~1 min unloaded)."""

from __future__ import annotations

import argparse
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "gpu_check.py"


def load_script():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_part_out_of_time_is_an_error_row_and_results_go_first_in_their_section(tmp_path):
    gpu_check = load_script()
    args = argparse.Namespace(work=str(tmp_path), seed=0, smoke=True, assets=None)
    rows = gpu_check.run_part("versions", args, budget=0.05)  # cannot even start python in time
    assert rows[-1]["part"] == "versions" and not rows[-1]["ok"] and "out of time" in rows[-1]["result"]
    results = tmp_path / "RESULTS.md"
    results.write_text("# Benchmark results\n\n## Other\n\ntext\n")
    ok = [dict(part="e2e", what="model | N", result="1.0 ms", ok=True, seconds=1.0)]
    gpu_check.write_results(str(results), ok, ["--first"], "GPU A")
    gpu_check.write_results(str(results), rows, ["--second"], "GPU B")
    text = results.read_text()
    assert text.count(gpu_check.SECTION) == 1 and text.index("## Other") < text.index(gpu_check.SECTION)
    assert text.index("--second") < text.index("--first")  # newest first
    assert "| versions |" in text and "| NO |" in text and "model / N" in text  # pipes in cells escaped


@pytest.mark.slow
def test_smoke_runs_every_part_on_the_cpu(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("TRITON_INTERPRET", None)  # the script sets it for the part that needs it
    results = tmp_path / "RESULTS.md"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--smoke", "--budget", "3000", "--work", str(tmp_path / "w"),
                           "--out", str(tmp_path), "--results", str(results)],
                          env=env, cwd=ROOT, capture_output=True, text=True, timeout=3600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for part in ("versions", "pytest", "layers", "e2e", "sweep"):
        assert f"| {part} |" in proc.stdout, part
    assert "streamed scan" in proc.stdout and "| ERROR" not in proc.stdout
    assert (tmp_path / "gpu_check.json").exists() and "## GPU check" in results.read_text()
