"""Attention-statistics kernels vs SDPA forward (the floor) vs eager pattern materialisation (the baseline).

    PYTHONPATH=. python3 benchmarks/attention_stats.py                       # CUDA: check, then time 4k..128k
    PYTHONPATH=. python3 benchmarks/attention_stats.py --results benchmarks/RESULTS.md --e2e smollm2-135m:8192
    PYTHONPATH=. python3 benchmarks/attention_stats.py --device cpu --e2e smollm2-135m:8001   # the fast CPU path
    PYTHONPATH=. python3 benchmarks/attention_stats.py --smoke                # CPU, Triton interpreter, tiny N

One call: first the kernel is checked against the float64 reference on random inputs (every statistic, fp32 and
bf16, causal / sliding window / padding mask), then one attention layer is timed per N: the kernel with the
default statistics (entropy, first-4 mass, log2 lag histogram, top-1, one target per query), SDPA forward of the
same shape, and eager materialisation of the softmax patterns (what output_attentions stores; OOM is caught).
Shapes: SmolLM2-135M (9 query heads, 3 KV heads, head size 64) and, with --shapes, Gemma-3-270M's global and
sliding-window (512) layers (4 query heads, 1 KV head, head size 256); B=1, bf16. Prints ms, ratio to SDPA and
peak extra memory; --results appends the table with device and date to a Markdown file; --out writes JSON.
--e2e NAME:N runs capture_stats (sink + entropy + lag histogram, per-head means) over every layer of the model
in one forward (the converted model from $WORKBENCH_HOME if cached, else random weights of the same shape:
time and memory do not depend on the weights) and reports time and peak memory against a plain forward.
--e2e runs two requests: "scan", the detectors' streamed request on repeated random tokens (one-lag bins at
lags 0, 1, 2, L, L+1 and the induction target; what `workbench scan --capture streamed` asks for), and "stats"
(the one above). --device cpu times the fast CPU path (backend "cpu", float32) instead of the kernel, on float32
inputs: per layer against SDPA, and end to end against a plain forward, interleaved (A, B, A, B, ...; median of
--repeats) in one process, with the load average, because a shared machine's speed drifts.
Needs only torch and triton (plus transformers for --e2e). --smoke runs everything at tiny N on the CPU in
Triton's interpreter, to check that the script works (its times mean nothing). Takes about 2-4 minutes on an H100.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import itertools
import math
import os
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere without installing

GIB = 2**30
EAGER_CPU_LIMIT = 3 * GIB  # eager patterns on the CPU only below this (scores + softmax, float32): the machine is shared
SHAPES = {  # one attention layer: query heads, key/value heads, head size, sliding window
    "smollm2": dict(hq=9, hkv=3, d=64, window=None),
    "gemma3-global": dict(hq=4, hkv=1, d=256, window=None),
    "gemma3-local": dict(hq=4, hkv=1, d=256, window=512),
}
MODELS = {  # shapes of the registered models, for --e2e without the converted weights
    "smollm2-135m": ("llama", dict(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                                   num_attention_heads=9, num_key_value_heads=3, head_dim=64,
                                   max_position_embeddings=8192, tie_word_embeddings=True)),
    "gemma3-270m": ("gemma3_text", dict(vocab_size=262144, hidden_size=640, intermediate_size=2048,
                                        num_hidden_layers=18, num_attention_heads=4, num_key_value_heads=1,
                                        head_dim=256, query_pre_attn_scalar=256, sliding_window=512,
                                        max_position_embeddings=32768,
                                        layer_types=(["sliding_attention"] * 5 + ["full_attention"]) * 3)),
}


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", type=int, nargs="*",
                    help="N to time (default 4096 ... 131072; CPU: 2048 4096 8192; --smoke: 48; no value: none)")
    ap.add_argument("--check-sizes", type=int, nargs="*",
                    help="N to check (default 257 2048; --smoke: 37; no value: none)")
    ap.add_argument("--shapes", nargs="*", default=["smollm2"], choices=sorted(SHAPES))
    ap.add_argument("--variants", type=int, nargs="*", default=[], help="also time launch variants at these N")
    ap.add_argument("--e2e", nargs="*", default=[], metavar="MODEL:N", help="capture_stats over a whole model")
    ap.add_argument("--results", help="append the table to this Markdown file (e.g. benchmarks/RESULTS.md)")
    ap.add_argument("--out", default=os.environ.get("OUT"), help="folder for attention_stats.json")
    ap.add_argument("--seed", type=int, default=int.from_bytes(os.urandom(3), "little"))
    ap.add_argument("--smoke", action="store_true", help="tiny N; on a CPU runs Triton's interpreter")
    ap.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto",
                    help="cpu: time the fast CPU path (float32) at real sizes (auto: cuda if there is one)")
    ap.add_argument("--repeats", type=int, default=3, help="timed repeats on the CPU (median; GPU: do_bench)")
    ap.add_argument("--threads", type=int, help="torch.set_num_threads first (CPU; default: torch's choice)")
    ap.add_argument("--e2e-requests", nargs="*", default=["scan", "stats"], choices=["scan", "stats"])
    ap.add_argument("--before", type=int, default=0, metavar="N",
                    help="--e2e on the CPU up to N tokens: also time the path that ran before the fast CPU path (the "
                         "reference backend), once per request, in the same process")
    return ap.parse_args(argv)


class Bench:
    """Device, inputs, timing and memory for one run. backend: "triton" (GPU, or the interpreter with --smoke) or
    "cpu" (the fast CPU path, float32 inputs)."""

    def __init__(self, device: str, seed: int, smoke: bool = False, repeats: int = 3):
        self.device, self.seed, self.smoke, self.repeats = device, seed, smoke, repeats
        self.cuda = device == "cuda"
        self.backend = "cpu" if device == "cpu" and not smoke else "triton"
        self.dtype = torch.float32 if self.backend == "cpu" else torch.bfloat16

    def inputs(self, shape: dict, n: int, dtype: torch.dtype, seed: int):
        g = torch.Generator().manual_seed(seed)
        q = torch.randn(1, shape["hq"], n, shape["d"], generator=g)
        k = torch.randn(1, shape["hkv"], n, shape["d"], generator=g)
        v = torch.randn(1, shape["hkv"], n, shape["d"], generator=g)
        targets = torch.randint(-1, n, (1, n), generator=g)
        return *(t.to(self.device, dtype) for t in (q, k, v)), targets.to(self.device)

    def stats(self, q, k, req, **kw):
        """The statistics through the backend under test."""
        if self.backend == "cpu":
            from workbench.kernels.cpu_stats import cpu_attention_stats

            return cpu_attention_stats(q, k, req, **kw)
        from workbench.kernels.triton_stats import triton_attention_stats

        return triton_attention_stats(q, k, req, **kw)

    def sync(self):
        if self.cuda:
            torch.cuda.synchronize()

    def measure(self, fn, rep_ms: float = 300.0) -> tuple[float, float | None]:
        """(median ms, peak extra GiB) of fn(); on a GPU ms from triton.testing.do_bench after its warm-up."""
        if not self.cuda:
            return self.interleaved({"fn": fn})["fn"]
        import triton

        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        fn()
        torch.cuda.synchronize()
        peak = (torch.cuda.max_memory_allocated() - base) / GIB
        return triton.testing.do_bench(fn, warmup=50, rep=rep_ms, return_mode="median"), peak

    def interleaved(self, fns: dict) -> dict:
        """CPU: {name: (median ms, peak extra GiB of resident memory)} running the functions in turn, repeats
        times (A, B, A, B, ...), so that a shared machine's drifting load hits all alike; --smoke: once each."""
        times = {name: [] for name in fns}
        peaks = {name: 0.0 for name in fns}
        for _ in range(1 if self.smoke else self.repeats):
            for name, fn in fns.items():
                base = reset_peak_rss()
                t0 = time.perf_counter()
                fn()
                times[name].append((time.perf_counter() - t0) * 1e3)
                peak = peak_rss()
                if base is not None and peak is not None:
                    peaks[name] = max(peaks[name], (peak - base) / GIB)
        have_rss = reset_peak_rss() is not None
        return {name: (statistics.median(v), peaks[name] if have_rss else None) for name, v in times.items()}


def reset_peak_rss() -> int | None:
    """Reset the process's resident-memory high-water mark (Linux: /proc/self/clear_refs); current RSS bytes."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return _status_kb("VmRSS") * 1024
    except OSError:
        return None


def peak_rss() -> int | None:
    """Resident-memory high-water mark in bytes since the last reset (Linux), else None."""
    try:
        return _status_kb("VmHWM") * 1024
    except OSError:
        return None


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise OSError(f"no {field} in /proc/self/status")


def machine() -> str:
    """The device, and on a CPU the core count and load average (the machine may be shared)."""
    if torch.cuda.is_available() and torch.device(DEVICE[0]).type == "cuda":
        return torch.cuda.get_device_name()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return f"CPU, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads, load average {load:.1f}"


DEVICE = ["cpu"]


def default_request(targets: torch.Tensor, n: int):
    """entropy + first-4 mass + log2 lag histogram up to N + one target per query + top-1."""
    from workbench.kernels import AttentionStatsRequest

    return AttentionStatsRequest.default(targets=targets, max_lag=max(n, 2))


def rel_err(a: torch.Tensor, r: torch.Tensor) -> float:
    a, r = a.double().cpu(), r.double().cpu()
    if not torch.equal(torch.isnan(a), torch.isnan(r)):
        return math.inf
    fin = torch.isfinite(r)
    return ((a[fin] - r[fin]).norm() / r[fin].norm().clamp_min(1e-30)).item() if fin.any() else 0.0


def check(bench: Bench, shapes: list[str], sizes: list[int]) -> list[dict]:
    """Backend vs float64 reference, every statistic; top-k through its probabilities (ties may reorder)."""
    from workbench.kernels.reference import reference_attention_stats

    rows = []
    dtypes = ((torch.float32, 1e-4),) if bench.backend == "cpu" else ((torch.float32, 1e-2), (torch.bfloat16, 1e-2))
    lags = (-1, 0, 1) if bench.smoke else tuple(range(-8, 8))  # the interpreter pays per lag
    for name in shapes:
        shape = SHAPES[name]
        for n in sizes:
            for masked in (False, True):
                for dtype, tol in dtypes:
                    seed = bench.seed + n + 7 * masked
                    q, k, _, targets = bench.inputs(shape, n, dtype, seed)
                    g = torch.Generator().manual_seed(seed)
                    key_mask = (torch.rand(1, n, generator=g) > 0.1).to(bench.device) if masked else None
                    s0 = torch.randint(0, n, (1, 3, 1), generator=g)
                    req = dataclasses.replace(default_request(targets, n), topk=4, target_lags=lags,
                                              spans=torch.cat([s0, s0 + 1 + n // 10], dim=-1))
                    kw = dict(scale=shape["d"] ** -0.5, window=shape["window"], key_mask=key_mask)
                    out = bench.stats(q, k, req, **kw, **({} if bench.backend == "cpu" else {"poison": 7777.0}))
                    ref = reference_attention_stats(q.double(), k.double(), req, **kw)
                    errs = {s: rel_err(out[s], ref[s]) for s in ref if s != "topk_index"}
                    unwritten = sum(int((out[s] == 7777.0).sum()) for s in out)
                    top1 = (out["topk_index"][..., 0] == ref["topk_index"][..., 0]).float().mean().item()
                    worst = max(errs, key=errs.get)
                    ok = errs[worst] < tol and unwritten == 0
                    rows.append(dict(shape=name, n=n, masked=masked, dtype=str(dtype).split(".")[-1], worst=worst,
                                     err=errs[worst], top1_agree=top1, unwritten=unwritten, ok=ok, errs=errs))
                    print(f"check {name:13s} N={n:5d} mask={masked!s:5s} {rows[-1]['dtype']:8s} worst {worst:12s} "
                          f"{errs[worst]:.1e}  top-1 agree {top1:.4f}  unwritten {unwritten}  "
                          f"{'PASS' if ok else 'FAIL'}", flush=True)
    return rows


def eager_patterns(q, k, window):
    """What output_attentions materialises (HF eager): softmax(q k^T * scale + mask) in fp32, cast to bf16."""
    n = q.shape[2]
    kr = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)
    i = torch.arange(n, device=q.device)
    hidden = i[None, :] > i[:, None]
    if window is not None:
        hidden |= i[None, :] <= i[:, None] - window
    scores = torch.matmul(q, kr.transpose(-1, -2)) * q.shape[-1] ** -0.5
    return torch.softmax(scores.masked_fill(hidden, -math.inf), dim=-1, dtype=torch.float32).to(q.dtype)


def sdpa(q, k, v, window):
    """SDPA forward with GQA; a sliding window needs an explicit mask (SDPA has no window argument)."""
    f = torch.nn.functional.scaled_dot_product_attention
    if window is None:
        return lambda: f(q, k, v, is_causal=True, enable_gqa=True)
    i = torch.arange(q.shape[2], device=q.device)
    mask = (i[None, :] <= i[:, None]) & (i[None, :] > i[:, None] - window)
    return lambda: f(q, k, v, attn_mask=mask, enable_gqa=True)


def time_sizes(bench: Bench, shapes: list[str], sizes: list[int]) -> list[dict]:
    """One layer per (shape, N): the backend with the default statistics vs SDPA forward vs eager patterns."""
    rows = []
    for name in shapes:
        shape = SHAPES[name]
        for n in sizes:
            q, k, v, targets = bench.inputs(shape, n, bench.dtype, bench.seed + n)
            req = default_request(targets, n)
            fns = {"kernel": lambda: bench.stats(q, k, req, scale=shape["d"] ** -0.5, window=shape["window"]),
                   "sdpa": sdpa(q, k, v, shape["window"])}
            eager_bytes = 2 * shape["hq"] * n * n * 4
            if bench.cuda or eager_bytes < EAGER_CPU_LIMIT:
                fns["eager"] = lambda: eager_patterns(q, k, shape["window"])
            res = bench.interleaved(fns) if not bench.cuda else {}
            for key, fn in fns.items():
                if bench.cuda:
                    try:
                        res[key] = bench.measure(fn)
                    except torch.OutOfMemoryError:  # eager: N x N; SDPA's explicit window mask: N x N
                        res[key] = (None, None)
                    torch.cuda.empty_cache()
            (ms_k, peak_k), (ms_s, peak_s) = res["kernel"], res["sdpa"]
            ms_e, peak_e = res.get("eager", (None, None))
            rows.append(dict(shape=name, n=n, kernel_ms=ms_k, kernel_peak_gib=peak_k, sdpa_ms=ms_s,
                             sdpa_peak_gib=peak_s, eager_ms=ms_e, eager_peak_gib=peak_e,
                             ratio=None if ms_s is None else ms_k / ms_s))
            print(f"time {name:13s} N={n:6d}: {bench.backend} {ms_k:9.2f} ms  sdpa {fmt(ms_s, '.2f')} ms  "
                  f"ratio {fmt(rows[-1]['ratio'], '.2f')}  eager {fmt(ms_e, '.2f')} ms", flush=True)
            del q, k, v, targets, fns
    return rows


def time_variants(bench: Bench, shapes: list[str], sizes: list[int]) -> list[dict]:
    """Launch variants (tiles, one vs two passes, packed vs per-head programs) and statistic subsets per shape."""
    from workbench.kernels import AttentionStatsRequest, log_lag_edges
    from workbench.kernels.triton_stats import triton_attention_stats

    configs = {f"{r}x{c} w{w} s{s}": dict(block_r=r, block_n=c, num_warps=w, num_stages=s)
               for r, c, w, s in ((128, 64, 8, 2), (128, 64, 4, 2), (128, 64, 4, 3), (64, 64, 4, 2),
                                  (64, 64, 8, 2), (64, 128, 4, 2), (128, 128, 8, 2), (64, 32, 4, 2))}
    rows = []
    for (name, shape), (i, n) in itertools.product(((s, SHAPES[s]) for s in shapes), enumerate(sizes)):
        q, k, _, targets = bench.inputs(shape, n, torch.bfloat16, bench.seed)
        full = default_request(targets, n)
        runs = [(f"default {c}", full, {"config": cfg}) for c, cfg in configs.items()]
        runs += [("default two-pass", full, {"passes": 2}), ("default per-head programs", full, {"group_heads": False})]
        if i == 0:
            runs += [(f"only {what}", req, {}) for what, req in {
                "lse": AttentionStatsRequest(), "entropy": AttentionStatsRequest(entropy=True),
                "first_k": AttentionStatsRequest(first_k=4),
                "lag bins": AttentionStatsRequest(lag_bins=log_lag_edges(n)),
                "top-1": AttentionStatsRequest(topk=1), "top-8": AttentionStatsRequest(topk=8),
                "targets": AttentionStatsRequest(targets=targets)}.items()]
        for variant, req, opts in runs:
            ms = bench.measure(lambda: triton_attention_stats(q, k, req, scale=shape["d"] ** -0.5,
                                                              window=shape["window"], **opts), 200)[0]
            rows.append(dict(shape=name, variant=variant, n=n, ms=ms))
            print(f"variant {name} N={n}: {variant:28s} {ms:8.3f} ms", flush=True)
    return rows


def e2e_inputs(subject, n: int, request: str, seed: int):
    """(input_ids, request) for an end-to-end run: "scan" = the detectors' streamed request on repeated random
    tokens (one-lag bins at lags 0, 1, 2, L, L+1 and the induction target; as workbench.detectors asks);
    "stats" = sink mass, entropy and a log2 lag histogram (per-head means) on random tokens."""
    from workbench.kernels import AttentionStatsRequest, log_lag_edges
    from workbench.stimuli import repeated_random_tokens

    if request == "scan":
        bos = subject.bos_token_id is not None
        stim = repeated_random_tokens(subject, seq_len=(n - int(bos)) // 2, n_repeats=2, batch=1, seed=seed)
        lags = {0, 1, 2} | {stim.seq_len, stim.seq_len + 1}
        return stim.input_ids, AttentionStatsRequest(lag_bins=torch.tensor(sorted(lags)),
                                                     targets=stim.induction_target, target_lags=(0,))
    ids = torch.randint(0, subject.vocab_size, (1, n), generator=torch.Generator().manual_seed(seed))
    return ids, AttentionStatsRequest(entropy=True, first_k=4, lag_bins=log_lag_edges(n), reduce="mean")


def end_to_end(bench: Bench, spec: str, requests=("scan", "stats"), before: int = 0) -> list[dict]:
    """capture_stats over all layers in one forward (the backend that "auto" picks) vs a plain forward of the same
    tokens, for each request; CPU: interleaved, median of --repeats; up to `before` tokens also the reference
    backend (what "auto" ran on the CPU before the fast path), timed once after the others."""
    from workbench.patterns import capture_stats
    from workbench.patterns.capture import predict_capture, select_heads
    from workbench.patterns.memory import ModelDims

    name, n = spec.split(":")
    n = int(n)
    subject, weights = load_subject(name, bench.device)
    rows = []
    for request in requests:
        ids, req = e2e_inputs(subject, n, request, bench.seed)
        ids = ids.to(bench.device)

        def plain():
            with torch.no_grad():
                subject.model(input_ids=ids, use_cache=False, logits_to_keep=1)
            bench.sync()

        def streamed():
            capture_stats(subject, ids, req)
            bench.sync()

        load0 = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
        if bench.cuda:
            (ms_plain, peak_plain), (ms_stats, peak_stats) = bench.measure(plain, 1000), bench.measure(streamed, 1000)
        else:
            res = bench.interleaved({"plain": plain, "stats": streamed})
            (ms_plain, peak_plain), (ms_stats, peak_stats) = res["plain"], res["stats"]
        ms_before = peak_before = None
        if ids.shape[1] <= before and not bench.cuda:
            base = reset_peak_rss()
            t0 = time.perf_counter()
            capture_stats(subject, ids, req, backend="reference")
            ms_before = (time.perf_counter() - t0) * 1e3
            peak = peak_rss()
            peak_before = None if base is None or peak is None else (peak - base) / GIB
        load1 = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
        cap = capture_stats(subject, ids, req)
        stat = "entropy" if req.entropy else "lag_mass"
        finite = all(bool(torch.isfinite(cap.stats[layer][stat]).all()) for layer in cap.stats)
        eager = predict_capture(ModelDims.of(subject), select_heads(subject), 1, ids.shape[1],
                                device_type=subject.device.type).peak
        row = dict(model=name, weights=weights, request=request, n=int(ids.shape[1]),
                   heads=subject.n_layers * subject.n_heads, plain_ms=ms_plain, plain_peak_gib=peak_plain,
                   stats_ms=ms_stats, stats_peak_gib=peak_stats, ratio=ms_stats / ms_plain, finite=finite,
                   exact_peak_gib=eager / GIB, load=(load0, load1), before_ms=ms_before,
                   before_peak_gib=peak_before)
        rows.append(row)
        print(f"e2e {name} ({weights}) {request} N={row['n']}: {row['heads']} heads, capture_stats {ms_stats:.1f} ms "
              f"(peak {fmt(peak_stats, '.2f')} GiB) vs plain forward {ms_plain:.1f} ms "
              f"(peak {fmt(peak_plain, '.2f')} GiB): {row['ratio']:.2f}x; exact capture would peak at "
              f"{row['exact_peak_gib']:.3g} GiB; statistics finite: {finite}"
              + ("" if ms_before is None else f"; before (reference backend) {ms_before:.1f} ms (peak "
                                              f"{fmt(peak_before, '.2f')} GiB) = {ms_before / ms_stats:.1f}x slower")
              + ("" if load0 is None else f"; load average {load0:.1f} -> {load1:.1f}"), flush=True)
    del subject
    return rows


def load_subject(name: str, device: str):
    """The converted model if it is cached, else the same architecture with random weights (bf16 on a GPU)."""
    import workbench.models as models

    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    if name in models.PRETRAINED and models.cached(name):
        return models.load(name, device=device, dtype=dtype), "converted weights"
    from transformers import AutoConfig, AutoModelForCausalLM

    kind, cfg = MODELS[name]
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(AutoConfig.for_model(kind, **cfg)).to(device, dtype).eval()
    return models.from_model(model, None, name=name), "random weights"


def fmt(x, spec: str) -> str:
    return "-" if x is None else format(x, spec)


def table(result: dict) -> str:
    """Markdown table of the timings (and end-to-end rows if any)."""
    lines = ["| shape | N | kernel ms | SDPA ms | kernel / SDPA | eager ms | kernel GiB | SDPA GiB | eager GiB |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in result["sizes"]:
        eager = "OOM" if r["eager_ms"] is None else fmt(r["eager_ms"], ".2f")
        eager_gib = "OOM" if r["eager_ms"] is None else fmt(r["eager_peak_gib"], ".2f")
        lines.append(f"| {r['shape']} | {r['n']} | {r['kernel_ms']:.2f} | {fmt(r['sdpa_ms'], '.2f')} | "
                     f"{fmt(r['ratio'], '.2f')} | {eager} | {fmt(r['kernel_peak_gib'], '.3f')} | "
                     f"{fmt(r['sdpa_peak_gib'], '.3f')} | {eager_gib} |")
    if result.get("e2e"):
        lines += ["", "| model (weights) | request | N | heads | capture_stats ms | plain forward ms | ratio | "
                  "capture_stats GiB | plain GiB | before ms (reference backend) | before / now | before GiB | "
                  "exact capture peak GiB |",
                  "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
        for r in result["e2e"]:
            before = r.get("before_ms")
            lines.append(f"| {r['model']} ({r['weights']}) | {r.get('request', 'stats')} | {r['n']} | {r['heads']} | "
                         f"{r['stats_ms']:.1f} | {r['plain_ms']:.1f} | {r['stats_ms'] / r['plain_ms']:.2f} | "
                         f"{fmt(r['stats_peak_gib'], '.2f')} | {fmt(r['plain_peak_gib'], '.2f')} | "
                         f"{fmt(before, '.1f')} | {fmt(None if before is None else before / r['stats_ms'], '.1f')} | "
                         f"{fmt(r.get('before_peak_gib'), '.2f')} | {r['exact_peak_gib']:.3g} |")
    return "\n".join(lines)


def append_results(path: str, result: dict, argv: list[str]) -> None:
    """Add this run (date, device, command, check verdict, table) under the kernels section of a Markdown file."""
    from workbench.io import atomic_write_text

    header = "## Attention-statistics kernels (benchmarks/attention_stats.py)"
    p = Path(path)
    text = p.read_text(encoding="utf-8") if p.exists() else "# Benchmark results\n"
    if header not in text:
        text = text.rstrip("\n") + f"\n\n{header}\n\nOne attention layer, B=1 (GPU: bf16; CPU: float32), default " \
            "statistics (entropy, first-4 mass, log2 lag histogram, top-1, one target per query); ms are medians " \
            "(GPU: triton.testing.do_bench; CPU: interleaved repeats); GiB is peak memory beyond the inputs " \
            "(GPU: allocated; CPU: resident). End to end: capture_stats of every layer vs a plain forward.\n"
    checks = "all PASS" if all(c["ok"] for c in result["check"]) else "FAIL"
    after = result.get("device_after", result["device"])
    device = result["device"] + ("" if after == result["device"] else f" (at the end: {after.split(', ')[-1]})")
    backend = {"cpu": "fast CPU path, float32", "triton": "Triton kernel, bf16"}[result.get("backend", "triton")]
    entry = (f"\n### {result['date']}, {device}\n\n`python3 benchmarks/attention_stats.py {' '.join(argv)}` "
             f"({backend}; torch {result['torch']}, triton {result['triton']}, seed {result['seed']}); checks vs "
             f"float64 reference: {checks}\n\n{table(result)}\n")
    at = text.index(header) + len(header)
    nxt = text.find("\n## ", at)  # newest first: right after the section's intro paragraph
    intro_end = text.find("\n### ", at)
    insert = nxt if nxt != -1 else len(text)
    if intro_end != -1 and (nxt == -1 or intro_end < nxt):
        insert = intro_end
    atomic_write_text(p, text[:insert].rstrip("\n") + "\n" + entry + text[insert:])


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA GPU here; use --device cpu (the fast CPU path) or --smoke")
    if device == "cpu" and args.smoke:
        os.environ.setdefault("TRITON_INTERPRET", "1")  # before the kernels are imported
        warnings.filterwarnings("ignore", category=RuntimeWarning, module="triton")  # log2(0) of masked rows
    DEVICE[0] = device
    if args.threads:
        torch.set_num_threads(args.threads)
    import triton

    from workbench.kernels.triton_stats import interpreting

    if device == "cpu" and args.smoke and not interpreting():
        raise SystemExit("set TRITON_INTERPRET=1 before the kernels are imported to run --smoke on the CPU")
    bench = Bench(device, args.seed, args.smoke, args.repeats)
    if args.smoke:
        sizes, check_sizes = [48], [37]
    elif bench.cuda:
        sizes, check_sizes = [4096, 8192, 16384, 32768, 65536, 131072], [257, 2048]
    else:
        sizes, check_sizes = [2048, 4096, 8192], [257, 2048]
    sizes = sizes if args.sizes is None else args.sizes  # given without values: none (e.g. only --e2e)
    check_sizes = check_sizes if args.check_sizes is None else args.check_sizes
    name = machine() if not (device == "cpu" and args.smoke) else "CPU (Triton interpreter)"
    what = {"cpu": "fast CPU path (float32)", "triton": "Triton kernel (bf16)"}[bench.backend]
    print(f"device {name}; torch {torch.__version__}; triton {triton.__version__}; {what}; seed {args.seed}",
          flush=True)
    result = {"device": name, "date": datetime.date.today().isoformat(), "torch": torch.__version__,
              "triton": triton.__version__, "seed": args.seed, "backend": bench.backend,
              "check": check(bench, args.shapes, check_sizes)}
    if args.variants:
        result["variants"] = time_variants(bench, args.shapes, args.variants)
    result["sizes"] = time_sizes(bench, args.shapes, sizes)
    result["e2e"] = [row for spec in args.e2e for row in end_to_end(bench, spec, args.e2e_requests, args.before)]
    result["device_after"] = machine() if device == "cpu" and not args.smoke else name
    if args.out:
        from workbench.io import atomic_write_json

        atomic_write_json(Path(args.out) / "attention_stats.json", result)
    print(f"\n{name}: one layer, B=1, {what}, default statistics\n\n{table(result)}\n")
    ok = all(c["ok"] for c in result["check"])
    print("checks vs float64 reference:", "all PASS" if ok else "FAIL")
    if args.results:
        append_results(args.results, result, argv)
        print(f"appended to {args.results}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
