"""Ahead-of-time compilation of the Triton kernels for NVIDIA GPUs, on a machine without one.

Each case below is planned by the launcher itself (``plan_launches`` with tensors on the "meta" device: the real
arguments, constexprs and tile choice, nothing allocated), specialised the way Triton's JIT specialises a launch
(``triton.runtime.jit.create_function_from_signature``), and compiled by ``triton.compile`` for
``GPUTarget("cuda", arch, 32)`` with the ptxas that the triton wheel bundles. ptxas's report gives registers,
spill stores/loads and the stack frame; Triton's metadata the shared memory. The results table is in
docs/kernels.md; tests/kernels/test_aot_compile.py asserts that everything compiles, fits in shared memory, and
that the default bf16/fp16 configurations do not spill.

    python -m workbench.kernels.aot --arch 90 80 [--dtypes bf16 fp32] [--heads 64 256] [--cases default scan]
                                    [--jobs 2] [--json FILE] [--markdown]

Run it without TRITON_INTERPRET=1: under the interpreter the kernels are not JIT functions and cannot be compiled
(the tests, whose conftest sets it, run this module in a subprocess).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import itertools
import json
import os
import re
import sys
import time
from concurrent.futures import ProcessPoolExecutor

import torch

from workbench.kernels.request import AttentionStatsRequest

N_TOKENS = 4099  # an odd length: ints not divisible by 16, as for most real prompts
DTYPES = {"bf16": (torch.bfloat16, "tf32"), "fp16": (torch.float16, "tf32"), "fp32": (torch.float32, "tf32"),
          "fp32-ieee": (torch.float32, "ieee")}
HEADS = {64: (9, 3), 128: (8, 2), 256: (4, 1)}  # head size: (query heads, key/value heads); SmolLM2, Llama, Gemma 3
SHARED_LIMIT = {90: 227 * 1024, 80: 163 * 1024}  # largest shared memory per block (opt-in): H100/H200, A100
CASES = ("default", "scan", "two-pass", "window", "padded", "top16", "everything")
QUICK = dict(arch=(90,), dtypes=("bf16",), heads=(64, 128, 256), cases=("default",))


def case_request(case: str, n: int = N_TOKENS) -> tuple[AttentionStatsRequest, dict]:
    """The request and launch options of a named case: what the workbench asks for, and the heaviest request."""
    targets = torch.zeros(1, n, dtype=torch.long)
    default = AttentionStatsRequest.default(targets=targets, max_lag=2**17)
    if case in ("default", "two-pass", "window", "padded"):
        opts = {"two-pass": {"passes": 2}, "window": {"window": 512},
                "padded": {"key_mask": torch.ones(1, n, dtype=torch.bool)}}.get(case, {})
        return default, opts
    if case == "scan":  # detectors' streamed request: one-lag bins and the induction target
        return AttentionStatsRequest(lag_bins=torch.tensor([0, 1, 2, n // 2, n // 2 + 1]), targets=targets), {}
    if case == "top16":
        return dataclasses.replace(default, topk=16), {}
    if case == "everything":  # every statistic at its limit, with window, padding mask and soft-capping
        spans = torch.zeros(1, 64, 2, dtype=torch.long)
        req = AttentionStatsRequest(entropy=True, first_k=4, spans=spans, lag_bins=torch.arange(64) * 7,
                                    targets=targets, target_lags=(-1, 0, 2), topk=16)
        return req, {"window": 512, "key_mask": torch.ones(1, n, dtype=torch.bool), "softcap": 50.0}
    raise ValueError(f"unknown case {case!r}; choose from {CASES}")


def planned(case: str, dtype_name: str, head_dim: int, config: dict | None = None):
    """The launches (kernel, grid, args, kwargs) the launcher makes for one case, planned on "meta" tensors
    (config overrides the stats kernel's tile choice, to try others)."""
    from workbench.kernels.triton_stats import interpreting, plan_launches

    if interpreting():
        raise RuntimeError("TRITON_INTERPRET=1 is set: the kernels are interpreted and cannot be compiled; run "
                           "python -m workbench.kernels.aot without it")
    dtype, precision = DTYPES[dtype_name]
    hq, hkv = HEADS[head_dim]
    request, opts = case_request(case)
    q = torch.empty(1, hq, N_TOKENS, head_dim, dtype=dtype, device="meta")
    k = torch.empty(1, hkv, N_TOKENS, head_dim, dtype=dtype, device="meta")
    if "key_mask" in opts:
        opts = {**opts, "key_mask": opts["key_mask"].to("meta")}
    _, launches = plan_launches(q, k, request, scale=head_dim ** -0.5, precision=precision, config=config, **opts)
    return launches


def specialise(launch, target):
    """(signature, constexprs, attrs, options) for triton.compile, as Triton's JIT derives them at launch."""
    from triton.compiler import make_backend
    from triton.runtime.jit import create_function_from_signature

    kernel = launch.kernel
    backend = make_backend(target)
    binder = create_function_from_signature(kernel.signature, kernel.params, backend)
    options = {key: launch.kwargs[key] for key in ("num_warps", "num_stages") if key in launch.kwargs}
    constexpr_kwargs = {key: v for key, v in launch.kwargs.items() if key not in options}
    bound, spec, _ = binder(*[_as_pointer(a) for a in launch.args], **constexpr_kwargs)
    kinds = [s[0] for s in spec]
    signature = dict(zip(bound, kinds))
    values = list(bound.values())
    constexprs = {(i,): values[i] for i, kind in enumerate(kinds) if kind == "constexpr"}
    attrs = {(i,): backend.parse_attr(s[1]) for i, s in enumerate(spec)
             if kinds[i] != "constexpr" and isinstance(s[1], str)}
    return signature, constexprs, attrs, backend.parse_options(options)


class _Pointer:
    """A stand-in for a device tensor (Triton reads only data_ptr and dtype): 256-byte aligned like CUDA's."""

    def __init__(self, dtype):
        self.dtype = dtype

    def data_ptr(self):
        return 1 << 20


def _as_pointer(arg):
    return _Pointer(arg.dtype) if isinstance(arg, torch.Tensor) else arg


def compile_launch(launch, arch: int) -> dict:
    """Compile one launch for sm_<arch>: registers, spill stores/loads and stack frame (bytes per thread, from
    ptxas), shared memory (bytes per block, from Triton), compile seconds."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    target = GPUTarget("cuda", arch, 32)
    signature, constexprs, attrs, options = specialise(launch, target)
    triton.knobs.nvidia.dump_ptxas_log = True
    triton.knobs.compilation.always_compile = True  # the log is printed only when ptxas runs
    log = io.StringIO()
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(log):
        compiled = triton.compile(ASTSource(launch.kernel, signature, constexprs, attrs), target=target,
                                  options=options.__dict__)
    seconds = time.perf_counter() - t0
    return dict(ptxas_report(log.getvalue()), shared=int(compiled.metadata.shared), compile_s=round(seconds, 1))


def ptxas_report(log: str) -> dict:
    """Registers, spill stores/loads and stack frame (bytes per thread) from `ptxas -v` output."""
    def number(pattern):
        found = re.search(pattern, log)
        if not found:
            raise RuntimeError(f"no {pattern!r} in the ptxas log:\n{log}")
        return int(found.group(1))

    return dict(registers=number(r"Used (\d+) registers"), spill_stores=number(r"(\d+) bytes spill stores"),
                spill_loads=number(r"(\d+) bytes spill loads"), stack=number(r"(\d+) bytes stack frame"))


def kernel_label(launch) -> str:
    """stats, stats (lse pass) / stats (pass 2) for the two-pass form, or target."""
    kw = launch.kwargs
    if "BLOCK_R" not in kw:
        return "target"
    if kw["LSE_GIVEN"]:
        return "stats (pass 2)"
    if not any(kw[f] for f in ("DO_ENT", "DO_FK", "DO_SPANS", "DO_LAG", "TOPK")):
        return "stats (lse only)"
    return "stats"


def compile_case(arch: int, dtype_name: str, head_dim: int, case: str, config: dict | None = None) -> list[dict]:
    """Compile every launch of one case; one row per launch (errors are rows too)."""
    rows = []
    try:
        launches = planned(case, dtype_name, head_dim, config)
    except Exception as e:  # noqa: BLE001 - a planning failure is a result
        return [dict(arch=arch, dtype=dtype_name, head_dim=head_dim, case=case, kernel="-", error=repr(e))]
    for launch in launches:
        kw = launch.kwargs
        tile = (f"{kw['BLOCK_R']}x{kw['BLOCK_N']}" if "BLOCK_R" in kw else f"{kw['BLOCK_Q']}") + \
               f" w{kw.get('num_warps', 4)} s{kw.get('num_stages', 3)}"
        row = dict(arch=arch, dtype=dtype_name, head_dim=head_dim, case=case, kernel=kernel_label(launch),
                   tile=tile, shared_limit=SHARED_LIMIT[arch])
        try:
            row.update(compile_launch(launch, arch))
            row["fits"] = row["shared"] <= SHARED_LIMIT[arch]
        except Exception as e:  # noqa: BLE001 - a compile failure is a result
            row["error"] = f"{type(e).__name__}: {str(e)[:300]}"
        rows.append(row)
    return rows


def compile_all(arch=(90, 80), dtypes=tuple(DTYPES), heads=tuple(HEADS), cases=CASES, jobs: int = 1,
                config: dict | None = None) -> list[dict]:
    """Compile every (arch, dtype, head size, case) combination; jobs > 1 compiles in that many processes."""
    work = [(*w, config) for w in itertools.product(arch, dtypes, heads, cases)]
    if jobs <= 1:
        return [row for w in work for row in compile_case(*w)]
    import multiprocessing

    with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        return [row for rows in pool.map(compile_case, *zip(*work)) for row in rows]


def markdown(rows: list[dict]) -> str:
    """The results as a Markdown table (one row per compiled launch)."""
    lines = ["| arch | dtype | D | case | kernel | tile, warps, stages | registers | spill st/ld (B) | stack (B) | "
             "shared (KB) | compile s |", "| --- | --- | ---: | --- | --- | --- | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        if "error" in r:
            lines.append(f"| sm_{r['arch']} | {r['dtype']} | {r['head_dim']} | {r['case']} | {r['kernel']} | "
                         f"ERROR: {r['error'][:80]} | | | | | |")
            continue
        lines.append(f"| sm_{r['arch']} | {r['dtype']} | {r['head_dim']} | {r['case']} | {r['kernel']} | {r['tile']} "
                     f"| {r['registers']} | {r['spill_stores']}/{r['spill_loads']} | {r['stack']} | "
                     f"{r['shared'] / 1024:.0f} | {r['compile_s']} |")
    return "\n".join(lines)


def toolchain() -> dict:
    """triton version and the bundled ptxas versions (sm_90 and newer use ptxas-blackwell in triton 3.9)."""
    import subprocess

    import triton
    from triton.backends.nvidia.compiler import get_ptxas

    out = {"triton": triton.__version__}
    for arch in (80, 90):
        tool = get_ptxas(arch)
        text = subprocess.run([tool.path, "--version"], capture_output=True, text=True).stdout
        out[f"ptxas sm_{arch}"] = (re.search(r"release ([\d.]+), V([\d.]+)", text) or [None, text])[0]
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--arch", type=int, nargs="+", default=[90, 80], choices=sorted(SHARED_LIMIT))
    ap.add_argument("--dtypes", nargs="+", default=list(DTYPES), choices=list(DTYPES))
    ap.add_argument("--heads", type=int, nargs="+", default=list(HEADS), choices=list(HEADS))
    ap.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    ap.add_argument("--jobs", type=int, default=1, help="compile in this many processes")
    ap.add_argument("--tile", help="override the stats kernel's tiles, e.g. 64x64w8s2 (block_r x block_n, warps, "
                    "stages), to compare with the launcher's choice")
    ap.add_argument("--json", help="write the rows (and the toolchain) to this file")
    ap.add_argument("--markdown", action="store_true", help="print a Markdown table")
    args = ap.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET", "0") == "1":
        print("unset TRITON_INTERPRET: interpreted kernels cannot be compiled", file=sys.stderr)
        return 2
    tools = toolchain()
    config = None
    if args.tile:
        r, n, w, s = map(int, re.fullmatch(r"(\d+)x(\d+)w(\d+)s(\d+)", args.tile).groups())
        config = dict(block_r=r, block_n=n, num_warps=w, num_stages=s)
    rows = compile_all(args.arch, args.dtypes, args.heads, args.cases, args.jobs, config)
    if args.json:
        from workbench.io import atomic_write_json

        atomic_write_json(args.json, {"toolchain": tools, "n_tokens": N_TOKENS, "rows": rows})
    print(markdown(rows) if args.markdown else "\n".join(json.dumps(r) for r in rows))
    print(f"# {tools}", file=sys.stderr)
    return 1 if any("error" in r or not r.get("fits", False) for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
