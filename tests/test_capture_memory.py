"""Memory predictions are upper bounds that are not wasteful: measured peak <= predicted <= 1.5 x measured.

Each case runs in a child process (benchmarks/capture_memory.py: niced, under an address-space limit) that
resets its high-water mark, runs one capture path once and reports the growth of its peak RSS (on a GPU,
torch.cuda.max_memory_allocated). Shapes keep each peak between ~100 MB and ~1 GB.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from workbench.models.attention import PATTERN_CHUNK_BYTES
from workbench.errors import CaptureMemoryError
from workbench.patterns import Budget, ModelDims, Prediction, predict_capture
from workbench.patterns.memory import exact_layer_bytes, largest_step
from tests.conftest import tiny_gemma3

ROOT = Path(__file__).resolve().parents[1]
SPEC = importlib.util.spec_from_file_location("capture_memory", ROOT / "benchmarks" / "capture_memory.py")
bench = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(bench)

TINY_CASES = [c for c in bench.DEFAULT_CASES if c["model"] in bench.TINY]  # one child process, ~15 s on 2 cores
MODEL_CASES = [c for c in bench.DEFAULT_CASES if c["model"] not in bench.TINY]


def check(rows: list[dict], cases: list[dict]) -> None:
    assert len(rows) == len(cases)
    for r in rows:
        label = f"{r['model']} {r['path']}: predicted {r['predicted'] >> 20} MiB, measured {r['measured'] >> 20} MiB"
        assert r["measured"] <= r["predicted"], label
        # Streamed statistics on a CPU are predicted with the chunked reference's working memory; the fast CPU
        # path (kernels/cpu_stats.py, 8 MB key tiles) needs less, so those predictions are safe but loose.
        streamed_cpu = r.get("device", "cpu") == "cpu" and (r["path"] == "scan_streamed" or r.get("method") == "streamed")
        assert r["predicted"] <= (5 if streamed_cpu else 1.5) * r["measured"], label


def cached(name: str) -> bool:
    from workbench.models.cache import manifest

    return manifest(name) is not None


def test_predictions_bound_measured_peaks_of_tiny_architectures():
    check(list(bench.measure(TINY_CASES, limit_gib=6)), TINY_CASES)


@pytest.mark.model
@pytest.mark.slow
def test_predictions_bound_measured_peaks_of_real_models():
    # one case per kind of pass on smollm2 (the full set: `python benchmarks/capture_memory.py`), and gemma3 where cached
    paths = {"capture_rows_z", "scan_exact", "scan_streamed", "sinks", "niah"}
    cases = [c for c in MODEL_CASES if (c["model"] == "smollm2-135m" and c["path"] in paths) or
             (c["model"] != "smollm2-135m" and cached(c["model"]))]
    check(list(bench.measure(cases, limit_gib=8)), cases)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_predictions_bound_cuda_max_memory_allocated():
    cases = TINY_CASES + [c for c in MODEL_CASES if c["model"] == "smollm2-135m"]
    check(list(bench.measure(cases, device="cuda", limit_gib=64)), cases)


def test_exact_layer_bytes_follow_the_chunking():
    """The transient of one layer's exact patterns: the result, the selected q/k, one chunk's bool mask."""
    out = 2 * 3 * 700 * 700 * 4
    rows = min(700, PATTERN_CHUNK_BYTES // (2 * 3 * 700 * 4))
    assert exact_layer_bytes(2, 3, 700, 700, 16) == out + 2 * 3 * 1400 * 16 * 4 + 2 * rows * 700


def test_predictions_grow_with_the_batch_step_and_largest_step_finds_the_edge():
    subject = tiny_gemma3()
    dims = ModelDims.of(subject)
    assert (dims.sliding_layers, dims.window, dims.d_ff) == (2, 4, 64)
    sel = {layer: [0, 1, 2] for layer in range(3)}
    preds = [predict_capture(dims, sel, 16, 200, n_rows=4, step=s).host for s in range(1, 17)]
    assert preds == sorted(preds) and preds[0] < preds[-1]
    budget = Budget(host_free=2 * preds[6] + 1, device_free=None)  # allows steps 1..7 (fraction 0.5)

    def predict(step: int) -> Prediction:
        return predict_capture(dims, sel, 16, 200, n_rows=4, step=step)

    assert largest_step(predict, 16, budget) == 7
    assert largest_step(predict, 16, Budget(host_free=1, device_free=None)) == 0


def test_scan_auto_streams_in_batch_steps_when_exact_does_not_fit(monkeypatch):
    """Under a budget below the exact prediction, `auto` streams (in the batch step that fits) and says why; the
    scores equal the exact ones; `exact` refuses with the numbers instead of running past the budget."""
    import numpy as np

    from workbench.detectors import REGISTRY, ScanContext
    from workbench.kernels import AttentionStatsRequest
    from workbench.patterns import predict_stats
    from tests.conftest import tiny_llama

    subject = tiny_llama(seed=1, vocab=300)  # room for 250 distinct random tokens
    settings = {"batch": 6, "seq_len": 250, "n_repeats": 2}  # 6 x 501 tokens
    ctx = ScanContext(seed=0, settings={**settings, "capture": "exact"})
    exact = REGISTRY["induction"].compute(subject, ctx)["induction"]
    plan = ctx.stimuli["repeated_random_tokens"]["memory"]
    stim = ctx.get("repeat", None).stim
    b, n = stim.input_ids.shape
    edges = torch.tensor([0, 1, 2, 250, 251])  # the lags the detector bins
    request = AttentionStatsRequest(lag_bins=edges, targets=stim.induction_target, target_lags=(0,))
    streamed = [predict_stats(ModelDims.of(subject), request, b, n, step=s).host for s in range(1, b + 1)]
    limit = (streamed[1] + min(streamed[2], plan["predicted_host_bytes"])) // 2  # allows 2 streamed rows, not exact
    assert streamed[1] <= limit < min(streamed[2], plan["predicted_host_bytes"])
    monkeypatch.setattr(Budget, "now", classmethod(lambda cls, device, fraction=0.5: cls(2 * limit, None)))
    auto = ScanContext(seed=0, settings={**settings, "capture": "auto"})
    scores = REGISTRY["induction"].compute(subject, auto)["induction"]
    chosen = auto.stimuli["repeated_random_tokens"]
    assert chosen["capture"] == "streamed" and chosen["memory"]["batch_size"] == 2
    assert chosen["memory"]["reason"].startswith("streamed in steps of 2 of 6 rows (exact would need")
    assert chosen["memory"]["predicted_host_bytes"] == streamed[1]
    assert np.allclose(scores.values, exact.values, atol=1e-5) and np.array_equal(scores.weights, exact.weights)
    with pytest.raises(CaptureMemoryError, match="Use --capture streamed"):
        REGISTRY["induction"].compute(subject, ScanContext(seed=0, settings={**settings, "capture": "exact"}))


def test_niah_batches_take_the_step_that_fits_each_length(monkeypatch):
    """plan_memory picks per prompt length the largest step up to batch_size that fits; plan_batches follows it."""
    from types import SimpleNamespace

    from workbench.retrieval.decode import predict_decoding
    from workbench.retrieval.niah import plan_batches, plan_memory

    subject = tiny_gemma3()
    dims = ModelDims.of(subject)
    tests = [SimpleNamespace(input_ids=torch.zeros(n)) for n in [300] * 5 + [100] * 5]
    long = [predict_decoding(dims, s, 300, 8).host for s in (1, 2, 3)]
    limit = (long[1] + long[2]) // 2  # two 300-token prompts fit, three do not
    assert predict_decoding(dims, 4, 100, 8).host <= limit  # four 100-token prompts fit
    monkeypatch.setattr(Budget, "now", classmethod(lambda cls, device, fraction=0.5: cls(2 * limit, None)))
    memory = plan_memory(subject, tests, 4, 8)
    assert {n: m["batch_size"] for n, m in memory.items()} == {"100": 4, "300": 2}
    assert memory["300"]["predicted_host_bytes"] == long[1]
    assert plan_batches(tests, 4, memory) == [[5, 6, 7, 8], [9], [0, 1], [2, 3], [4]]
    assert plan_batches(tests, 4) == [[5, 6, 7, 8], [9], [0, 1, 2, 3], [4]]
    monkeypatch.setattr(Budget, "now", classmethod(lambda cls, device, fraction=0.5: cls(1, None)))
    with pytest.raises(CaptureMemoryError, match="answering 100-token NIAH prompts needs"):
        plan_memory(subject, tests, 4, 8)
