"""benchmarks/attention_stats.py runs end to end (--smoke: CPU, Triton interpreter, tiny N) and records its table."""

import importlib.util
import json
from pathlib import Path

import pytest
import torch

pytest.importorskip("triton")
pytestmark = pytest.mark.filterwarnings("ignore:.*encountered in:RuntimeWarning")  # interpreter: log2(0)
SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "attention_stats.py"


@pytest.mark.skipif(torch.cuda.is_available(), reason="the GPU run is the benchmark itself")
def test_benchmark_smoke_checks_times_and_appends_results(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("attention_stats_benchmark", SCRIPT)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    results = tmp_path / "RESULTS.md"
    results.write_text("# Benchmark results\n\n## Other section\n\ntext\n")
    args = ["--smoke", "--sizes", "20", "--check-sizes", "21", "--results", str(results), "--out", str(tmp_path)]
    assert bench.main(args) == 0
    out = capsys.readouterr().out
    assert "checks vs float64 reference: all PASS" in out and out.count("PASS") == 5  # 2 masks x 2 dtypes + total
    text = results.read_text()
    first = text.index("| smollm2 | 20 |")
    assert text.index("## Other section") < text.index("## Attention-statistics kernels") < first
    assert "CPU (Triton interpreter)" in text
    result = json.loads((tmp_path / "attention_stats.json").read_text())
    assert [r["n"] for r in result["sizes"]] == [20] and result["sizes"][0]["kernel_ms"] > 0
    bench.append_results(str(results), result, ["--again"])  # a later run: same section, newest first
    text = results.read_text()
    assert text.count("## Attention-statistics kernels") == 1 and text.index("--again") < text.index("--smoke")


def test_benchmark_cpu_path_checks_times_and_runs_end_to_end(tmp_path, capsys):
    """--device cpu: the fast CPU path against the reference, per layer against SDPA, and a streamed scan against a
    plain forward (interleaved) through the model."""
    spec = importlib.util.spec_from_file_location("attention_stats_benchmark_cpu", SCRIPT)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    args = ["--device", "cpu", "--sizes", "64", "--check-sizes", "37", "--repeats", "1", "--e2e", "smollm2-135m:33",
            "--e2e-requests", "scan", "--before", "33", "--out", str(tmp_path), "--results", str(tmp_path / "RESULTS.md")]
    assert bench.main(args) == 0
    out = capsys.readouterr().out
    assert "fast CPU path (float32)" in out and out.count("PASS") == 3  # 2 masks x float32 + total
    result = json.loads((tmp_path / "attention_stats.json").read_text())
    assert result["backend"] == "cpu" and result["sizes"][0]["ratio"] > 0
    (e2e,) = result["e2e"]
    assert e2e["request"] == "scan" and e2e["n"] == 33 and e2e["finite"] and e2e["stats_ms"] > 0
    assert e2e["before_ms"] > 0  # the reference backend, timed in the same run
    assert "| scan | 33 |" in (tmp_path / "RESULTS.md").read_text()
