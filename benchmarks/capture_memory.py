"""Predicted vs measured peak memory of every path that materialises per-layer attention.

Each case runs in a child process (niced, with an address-space limit) that loads the model, warms the path up
on a small input, resets the high-water mark, runs the path once and reports the growth of its peak: the RSS
high-water mark on a CPU (``/proc/self/clear_refs`` then ``VmHWM``), ``torch.cuda.max_memory_allocated`` on a
GPU. The prediction is the one the path itself used to choose its batch step (or the one it would use).

Usage: PYTHONPATH=. python benchmarks/capture_memory.py [--set default|gpu|gemma-scan] [--device cuda]
Prints a Markdown table (predicted, measured, ratio) for benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# (model, path, shape): models are registered names or tiny architectures from tests/conftest.py
TINY = {
    "tiny-llama-h8": dict(kind="llama", n_layers=2, n_heads=8, n_kv=2, d_head=16, vocab=96),
    "tiny-llama-h16": dict(kind="llama", n_layers=3, n_heads=16, n_kv=4, d_head=8, vocab=96),
    "tiny-gemma3-w64": dict(kind="gemma3", window=64, vocab=96),
}

DEFAULT_CASES = [
    # tiny architectures: patterns dominate (little compute)
    {"model": "tiny-llama-h8", "path": "capture", "batch": 4, "n": 768},
    {"model": "tiny-llama-h8", "path": "sinks", "batch": 8, "n": 1024},
    {"model": "tiny-llama-h16", "path": "capture", "batch": 2, "n": 640, "batch_size": 1},
    {"model": "tiny-gemma3-w64", "path": "capture", "batch": 8, "n": 700},
    {"model": "tiny-gemma3-w64", "path": "capture_rows_z", "batch": 6, "n": 1400, "rows": 8},
    # real models, every path (short batches: a 2-core CPU runs ~1k tokens of these models per 10-30 s)
    {"model": "smollm2-135m", "path": "capture", "batch": 1, "n": 700},
    {"model": "smollm2-135m", "path": "capture", "batch": 2, "n": 600, "layers": [3, 17], "batch_size": 1},
    {"model": "smollm2-135m", "path": "capture_rows_z", "batch": 2, "n": 1001, "rows": 12},
    {"model": "smollm2-135m", "path": "scan_exact", "batch": 1, "seq_len": 1000},
    {"model": "smollm2-135m", "path": "scan_streamed", "batch": 1, "seq_len": 1000},
    {"model": "smollm2-135m", "path": "sinks", "batch": 2, "n": 1024},
    {"model": "smollm2-135m", "path": "lists", "batch": 4, "items": 150, "method": "exact"},
    {"model": "smollm2-135m", "path": "niah", "batch": 2, "n": 1024, "new": 4},
    {"model": "gemma3-270m", "path": "capture", "batch": 1, "n": 900},
    {"model": "gemma3-270m", "path": "capture_logits", "batch": 1, "n": 300},
    {"model": "gemma3-270m", "path": "scan_exact", "batch": 1, "seq_len": 1000},
    {"model": "gemma3-270m", "path": "scan_streamed", "batch": 1, "seq_len": 1000},
    {"model": "gemma3-270m", "path": "sinks", "batch": 4, "n": 1024},
    {"model": "gemma3-270m", "path": "lists", "batch": 2, "items": 100, "method": "streamed"},
    {"model": "gemma3-270m", "path": "niah", "batch": 2, "n": 1024, "new": 4},
]
# the command: `workbench scan --model gemma3-270m --seq-len 600` (batch 10 x 1,201 tokens), whole scan
GEMMA_SCAN = [{"model": "gemma3-270m", "path": "scan", "batch": 10, "seq_len": 600}]


def _status() -> dict[str, int]:
    text = Path("/proc/self/status").read_text()
    return {k: int(re.search(k + r":\s+(\d+)", text).group(1)) * 1024 for k in ("VmRSS", "VmHWM")}


def _reset(device) -> int:
    """Forget the high-water mark; return the current level (bytes)."""
    import torch

    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        return torch.cuda.memory_allocated()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)  # give freed heap pages back, so they are not reused unseen
    except OSError:
        pass
    Path("/proc/self/clear_refs").write_text("5")
    return _status()["VmRSS"]


def _peak(device) -> int:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated()
    return _status()["VmHWM"]


def _subject(name: str, device: str):
    if name in TINY:
        sys.path.insert(0, str(ROOT))
        from tests.conftest import tiny_gemma3, tiny_llama

        spec = dict(TINY[name])
        kind = spec.pop("kind")
        subject = tiny_llama(**spec) if kind == "llama" else tiny_gemma3(**spec)
        subject.model.to(device)
        subject.context_limit = 4096  # the tiny configs say 512; RoPE has no length limit
        return subject
    import workbench as wb

    return wb.load(name, device=device)


def _plan(memory: dict) -> dict:
    return {"host": memory["predicted_host_bytes"], "device": memory["predicted_device_bytes"]}


def _run(subject, case: dict, small: bool):
    """Run one path once; returns (result, predicted Prediction-like dict)."""
    import torch

    from workbench.patterns import Budget, ModelDims, capture, predict_capture, select_heads

    dims = ModelDims.of(subject)
    dev = subject.device.type
    unlimited = Budget(1 << 50, 1 << 50)
    path = case["path"]
    b, n = (1, 24) if small else (case.get("batch", 1), case.get("n", 0))
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(4, min(subject.vocab_size, 20000), (b, max(n, 2)), generator=gen)
    if path in ("capture", "capture_logits", "capture_rows_z"):
        sel = select_heads(subject, layers=case.get("layers"))
        rows = None if path != "capture_rows_z" else list(range(ids.shape[1] - case["rows"], ids.shape[1]))
        step = None if small else case.get("batch_size")
        cap = capture(subject, ids, layers=case.get("layers"), rows=rows, z=path == "capture_rows_z",
                      logits=path == "capture_logits", batch_size=step, budget=unlimited)
        pred = predict_capture(dims, sel, b, ids.shape[1], step=cap.memory["batch_size"], device_type=dev,
                               n_rows=None if rows is None else len(rows), z=path == "capture_rows_z",
                               logits=path == "capture_logits")
        return cap, pred
    if path in ("scan_exact", "scan_streamed", "scan"):
        from workbench.detectors import REGISTRY, ScanContext
        from workbench.scanning import scan

        settings = {"batch": 2 if small else case["batch"], "seq_len": 8 if small else case["seq_len"]}
        if path == "scan":
            atlas = scan(subject, seed=0, settings=settings)
            plans = [s["memory"] for s in atlas.meta["stimuli"].values() if isinstance(s, dict) and "memory" in s]
            return atlas, {"host": max(p["predicted_host_bytes"] for p in plans),
                           "device": max(p["predicted_device_bytes"] for p in plans),
                           "plans": [p["reason"] for p in plans]}
        ctx = ScanContext(seed=0, settings={**settings, "capture": path.split("_")[1]})
        out = REGISTRY["induction"].compute(subject, ctx)
        return out, _plan(ctx.stimuli["repeated_random_tokens"]["memory"])
    if path == "sinks":
        from workbench.retrieval.sinks import _key_importance

        alpha, memory = _key_importance(subject, ids, None, None, unlimited)
        return alpha, _plan(memory)
    if path == "lists":
        from workbench.episodic.capture import capture_lists
        from workbench.stimuli.lists import random_token_lists

        lists = random_token_lists(subject, 4 if small else case["items"], 2 if small else case["batch"], seed=0)
        out = capture_lists(subject, lists, method=case["method"])
        return out, _plan(out.settings["memory"])
    if path == "niah":
        from workbench.models.decoding import prefill
        from workbench.retrieval.decode import decode, predict_decoding

        state = prefill(subject, ids)
        new = 2 if small else case["new"]
        out = decode(subject, state, new, stop_at_newline=False, record=True)
        return (state, out), predict_decoding(dims, b, ids.shape[1], new, device_type=dev)
    raise ValueError(f"unknown path {path}")


def child(spec: dict) -> None:
    """Measure each case of ``spec`` in this process; print one JSON line per case."""
    import torch

    torch.set_num_threads(int(os.environ.get("MEMCHECK_THREADS", "1")))
    subject = None
    for case in spec["cases"]:
        if subject is None or subject.name != case["model"]:
            subject = None
            gc.collect()
            subject = _subject(case["model"], spec.get("device", "cpu"))
            subject.name = case["model"]
        device = subject.device
        _run(subject, case, small=True)  # warm-up: lazy initialisation, kernels, tokenizer tables
        base = _reset(device)
        result, pred = _run(subject, case, small=False)
        measured = _peak(device) - base
        del result
        pred = pred if isinstance(pred, dict) else {"host": pred.host, "device": pred.device}
        predicted = pred["device"] if device.type == "cuda" else pred["host"]
        print(json.dumps({**case, "device": device.type, "predicted": int(predicted), "measured": int(measured),
                          **({"plans": pred["plans"]} if "plans" in pred else {})}), flush=True)


def measure(cases: list[dict], device: str = "cpu", limit_gib: float = 7.0, timeout: int = 3600):
    """Yield one result per case of ``cases`` (grouped by model, one child process per model, niced, under an
    address-space limit); a child that fails raises RuntimeError after the results it gave."""
    by_model: dict[str, list[dict]] = {}
    for c in cases:  # the tiny architectures share one child (one import of torch and transformers)
        by_model.setdefault("tiny" if c["model"] in TINY else c["model"], []).append(c)
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"), "WORKBENCH_PROGRESS": "0"}
    limit = int(limit_gib * 2**30)
    for model, group in by_model.items():
        spec = json.dumps({"cases": group, "device": device})
        cmd = ["nice", "-n", "5", "prlimit", f"--as={limit}", sys.executable, __file__, "--child", spec]
        with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env) as proc:
            for line in proc.stdout:
                if line.startswith("{"):
                    yield json.loads(line)
            err = proc.stderr.read()
            if proc.wait(timeout) != 0:
                raise RuntimeError(f"memory check of {model} failed ({proc.returncode}):\n{err[-3000:]}")


def table(rows: list[dict]) -> str:
    """Markdown: one line per case."""
    lines = ["| model | path | shape | predicted | measured | predicted / measured |", "| --- | --- | --- | ---: | ---: | ---: |"]
    for r in rows:
        shape = ", ".join(f"{k} {v}" for k, v in r.items()
                          if k not in ("model", "path", "device", "predicted", "measured", "plans"))
        lines.append(f"| {r['model']} | {r['path']} | {shape} | {r['predicted'] / 2**20:.0f} MiB | "
                     f"{r['measured'] / 2**20:.0f} MiB | {r['predicted'] / max(r['measured'], 1):.2f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--set", default="default", choices=("default", "gemma-scan"))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--limit-gib", type=float, default=7.0, help="address-space limit of each child")
    args = parser.parse_args()
    if args.child:
        child(json.loads(args.child))
        return
    rows = []
    for row in measure(DEFAULT_CASES if args.set == "default" else GEMMA_SCAN, args.device, args.limit_gib):
        print(table([row]).splitlines()[-1], flush=True)
        rows.append(row)
    print(table(rows))


if __name__ == "__main__":
    main()
