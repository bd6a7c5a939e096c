"""The GPU check of the long-context statistics: one command, at most 8 minutes on an H100/H200, one table.

    python3 benchmarks/gpu_check.py --prepare .gpu-check          # here, once: the assets the GPU machine lacks
    PYTHONUNBUFFERED=1 PYTHONPATH=. python3 benchmarks/gpu_check.py --assets .gpu-check --out $OUT \\
        --results benchmarks/RESULTS.md                              # on the GPU machine (docs/kernels.md)
    PYTHONPATH=. python3 benchmarks/gpu_check.py --smoke          # the whole script on the CPU at tiny sizes

Parts, each in its own process with a time budget (a part that fails or runs out of time puts its error in the
table and the others run; rows a part finished before that are kept):

1. versions: GPU, driver, torch, CUDA, triton;
2. ``pytest -m gpu tests/kernels``: the kernels against the float64 reference at the models' shapes;
3. one layer, bf16, kernel (default statistics) vs SDPA forward vs eager patterns at 4k..128k tokens for the
   SmolLM2-135M shape and Gemma-3-270M's global and sliding-window layers: time ratio and peak memory (targets:
   <= 2.5x SDPA at >= 16k tokens, < 1 GiB beyond the inputs at 128k);
4. end to end: a streamed scan (capture_stats of every layer with the detectors' request on repeated random
   tokens) of smollm2-135m at 8k and gemma3-270m at 32k tokens vs a plain forward of the same tokens;
5. the 270-head single-head ablation sweep on 64 x 256-token induction prompts vs the naive loop
   (benchmarks/ablation_sweep.py).

The GPU machine cannot reach a model hub or PyPI and takes 64 MiB of files per call, less than the converted
models (smollm2-135m: 538 MB float32, 269 MB bf16; its Q4_1 GGUF 98 MB). Time and memory do not depend on the
weights, so parts 4 and 5 use the models' exact architectures with random weights unless the converted cache is
there ($WORKBENCH_HOME); --prepare copies what those need from the local cache (configs, smollm2's tokenizer:
about 4 MB) into a git-ignored folder that the device call carries.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from anywhere without installing

BUDGET_S = 470  # the whole check; each part gets min(its budget, what is left)
PARTS = {  # name: (budget in seconds, what it measures)
    "versions": (40, "GPU, driver, torch, CUDA, triton"),
    "pytest": (150, "pytest -m gpu tests/kernels"),
    "layers": (120, "one layer: kernel vs SDPA vs eager"),
    "e2e": (80, "streamed scan vs plain forward"),
    "sweep": (80, "270-head ablation sweep vs naive loop"),
}
SIZES = [4096, 8192, 16384, 32768, 65536, 131072]
SHAPES = ["smollm2", "gemma3-global", "gemma3-local"]
E2E = ["smollm2-135m:8192", "gemma3-270m:32768"]
RATIO_TARGET, MEMORY_TARGET_GIB = 2.5, 1.0
PYTEST_PROCESSES = 4  # concurrent pytest processes for the gpu tests (each compiles its own kernel variants)
SECTION = "## GPU check (benchmarks/gpu_check.py)"


def attention_stats_module():
    """benchmarks/attention_stats.py as a module (its timing, shapes and end-to-end helpers)."""
    spec = importlib.util.spec_from_file_location("attention_stats_bench", ROOT / "benchmarks" / "attention_stats.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ---------------------------------------------------------------- parts (each runs in its own process)

def part_versions(args, emit):
    import torch
    import triton

    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else f"none ({platform.processor() or 'CPU'})"
    driver = "-"
    if shutil.which("nvidia-smi"):
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version,memory.total", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20).stdout.strip()
        driver = out.splitlines()[0] if out else "-"
    emit(part="versions", what="GPU / driver, memory",
         result=f"{gpu} / {driver}", ok=True)
    emit(part="versions", what="torch / CUDA / triton / python",
         result=f"{torch.__version__} / {torch.version.cuda} / {triton.__version__} / {platform.python_version()}",
         ok=True)


def part_pytest(args, emit):
    """pytest -m gpu tests/kernels, its tests split over a few concurrent processes (most of its time is Triton
    compiling one kernel variant per test on the CPU; the GPU work is small), one row with the totals."""
    base = [sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider", "tests/kernels"]
    if args.smoke:
        base += ["-k", "gpu_auto_backend"]
    listed = subprocess.run(base + ["--collect-only"], cwd=ROOT, capture_output=True, text=True,
                            timeout=args.part_budget - 5)
    ids = [line for line in listed.stdout.splitlines() if "::" in line]
    shards = [ids[i::PYTEST_PROCESSES] for i in range(min(PYTEST_PROCESSES, len(ids)))] or [[]]
    t0 = time.monotonic()
    procs = [subprocess.Popen(base[:3] + ["-q", "-p", "no:cacheprovider", "-m", "gpu", *(shard or ["tests/kernels"])],
                              cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for shard in shards]
    outs = []
    for proc in procs:
        try:
            outs.append(proc.communicate(timeout=max(1, args.part_budget - 5 - (time.monotonic() - t0)))[0])
        except subprocess.TimeoutExpired:
            proc.kill()
            outs.append(proc.communicate()[0] + "\nTIMEOUT")
    counts = {}
    for out in outs:
        last = out.strip().splitlines()[-1] if out.strip() else ""
        for n, word in re.findall(r"(\d+) (passed|failed|skipped|errors?|deselected)", last):
            counts[word] = counts.get(word, 0) + int(n)
    failed = [line for out in outs for line in out.splitlines() if line.startswith(("FAILED", "ERROR"))]
    timeouts = sum(out.endswith("TIMEOUT") for out in outs)
    ok = all(p.returncode == 0 for p in procs) and (counts.get("passed", 0) > 0 or args.smoke)  # CPU: skipped
    emit(part="pytest", what=f"pytest -m gpu tests/kernels ({len(ids)} tests in {len(shards)} processes)",
         result=", ".join(f"{n} {w}" for w, n in counts.items()) + (f"; {timeouts} processes out of time"
                                                                     if timeouts else "")
         + ("; " + "; ".join(failed[:3]) if failed else ""), ok=ok)


def part_layers(args, emit):
    import torch

    bench_mod = attention_stats_module()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    bench = bench_mod.Bench(device, args.seed, smoke=args.smoke)
    sizes = [48, 64] if args.smoke else SIZES
    for shape in SHAPES:
        for n in sizes:
            try:
                row = bench_mod.time_sizes(bench, [shape], [n])[0]
            except Exception as e:  # noqa: BLE001 - a failed size is a row; the others still run
                emit(part="layers", what=f"{shape} N={n}", result=f"ERROR {type(e).__name__}: {e}"[:200], ok=False)
                continue
            target = []
            if n >= 16384 and row["ratio"] is not None:
                target.append(f"<= {RATIO_TARGET}x SDPA: {'yes' if row['ratio'] <= RATIO_TARGET else 'NO'}")
            if n >= 131072 and row["kernel_peak_gib"] is not None:
                target.append(f"< {MEMORY_TARGET_GIB} GiB: {'yes' if row['kernel_peak_gib'] < MEMORY_TARGET_GIB else 'NO'}")
            emit(part="layers", what=f"{shape} N={n}",
                 result=f"kernel {row['kernel_ms']:.2f} ms / SDPA {fmt(row['sdpa_ms'])} ms = {fmt(row['ratio'])}x; "
                        f"eager {fmt(row['eager_ms'], 'OOM')} ms; peak GiB kernel {fmt(row['kernel_peak_gib'], '-', 3)}"
                        f" SDPA {fmt(row['sdpa_peak_gib'], '-', 3)} eager {fmt(row['eager_peak_gib'], 'OOM', 2)}"
                        + ("; " + ", ".join(target) if target else ""),
                 ok=not any("NO" in t for t in target), data=row)
            if device == "cuda":
                torch.cuda.empty_cache()


def part_e2e(args, emit):
    import torch

    bench_mod = attention_stats_module()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    bench = bench_mod.Bench(device, args.seed, smoke=args.smoke)
    specs = ["smollm2-135m:65", "gemma3-270m:65"] if args.smoke else E2E
    for spec in specs:
        try:
            for row in bench_mod.end_to_end(bench, spec, ("scan",)):
                emit(part="e2e", what=f"{row['model']} ({row['weights']}) N={row['n']} streamed scan",
                     result=f"{row['stats_ms']:.1f} ms vs plain forward {row['plain_ms']:.1f} ms = "
                            f"{row['ratio']:.2f}x; peak GiB {fmt(row['stats_peak_gib'], '-', 2)} vs "
                            f"{fmt(row['plain_peak_gib'], '-', 2)}; finite: {row['finite']}",
                     ok=bool(row["finite"]), data=row)
        except Exception as e:  # noqa: BLE001
            emit(part="e2e", what=spec, result=f"ERROR {type(e).__name__}: {e}"[:200], ok=False)
        if device == "cuda":
            torch.cuda.empty_cache()


def part_sweep(args, emit):
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = model_folder("smollm2-135m", args)
    cmd = [sys.executable, str(ROOT / "benchmarks" / "ablation_sweep.py"), "--model", model, "--device", device,
           "--out", str(Path(args.work) / "sweep")]
    cmd += ["--prompts", "2", "--seq-len", "8", "--naive-cells", "2", "--layers", "0"] if args.smoke else \
        ["--prompts", "64", "--seq-len", "256", "--naive-cells", "27"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=args.part_budget - 5, env=env)
    rows = [line for line in proc.stdout.splitlines() if line.startswith("| ") and "---" not in line]
    if proc.returncode != 0 or len(rows) < 2:
        raise RuntimeError(f"ablation_sweep.py exit {proc.returncode}: {proc.stderr.strip()[-300:]}")
    cells = [c.strip() for c in rows[1].strip().strip("|").split("|")]  # its columns, in order:
    keys = ("device", "model", "prompts x tokens", "cells", "sweep", "naive", "ratio", "max |diff|")
    got = dict(zip(keys, cells))
    emit(part="sweep", what=f"{got.get('cells', '?')} heads, {got.get('prompts x tokens', '?')} tokens "
                            f"({'converted' if model == 'smollm2-135m' else 'random'} weights)",
         result=f"sweep {got.get('sweep')} vs naive loop {got.get('naive')} = {got.get('ratio')}; "
                f"max |diff| {got.get('max |diff|')}", ok=True, data=got)


def model_folder(name: str, args) -> str:
    """The registered name if the converted model is cached, else a folder with the model's architecture and random
    weights (config and tokenizer from --assets, written by --prepare)."""
    import workbench.models as models

    if models.cached(name):
        return name
    assets = Path(args.assets or ".gpu-check") / name
    if not (assets / "config.json").is_file():
        raise RuntimeError(f"{name} is not cached and {assets} has no config.json: run --prepare here and carry it")
    folder = Path(args.work) / f"{name}-random"
    if not (folder / "model.safetensors").is_file():
        import torch
        from transformers import AutoConfig, AutoModelForCausalLM

        torch.manual_seed(0)
        config = AutoConfig.from_pretrained(assets)
        AutoModelForCausalLM.from_config(config).to(torch.bfloat16).save_pretrained(folder)
        for f in assets.iterdir():
            if f.name != "config.json":
                shutil.copy(f, folder / f.name)
    return str(folder)


# ---------------------------------------------------------------- orchestration

def fmt(x, none: str = "-", digits: int = 2) -> str:
    return none if x is None else f"{x:.{digits}f}"


def run_part(name: str, args, budget: float) -> list[dict]:
    """Run one part in its own process within budget seconds; its rows, plus an error row if it failed."""
    out = Path(args.work) / f"part-{name}.jsonl"
    out.unlink(missing_ok=True)
    cmd = [sys.executable, str(Path(__file__).resolve()), "--part", name, "--part-out", str(out),
           "--part-budget", str(int(budget)), "--seed", str(args.seed), "--work", args.work]
    cmd += ["--smoke"] if args.smoke else []
    cmd += ["--assets", args.assets] if args.assets else []
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    if args.smoke and name == "layers":
        env["TRITON_INTERPRET"] = "1"  # no GPU: the kernel runs in Triton's interpreter at tiny sizes
    t0 = time.perf_counter()
    error = None
    try:
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=budget)
        if proc.returncode != 0:
            error = (proc.stderr.strip().splitlines() or ["?"])[-1][:200]
    except subprocess.TimeoutExpired:
        error = f"out of time ({budget:.0f} s budget)"
    seconds = time.perf_counter() - t0
    rows = [json.loads(line) for line in out.read_text().splitlines()] if out.exists() else []
    if error:
        rows.append(dict(part=name, what=PARTS[name][1], result=f"ERROR: {error}", ok=False))
    for row in rows:
        row.setdefault("seconds", round(seconds, 1))
    print(f"[{name}] {seconds:.0f} s, {len(rows)} rows" + (f", {error}" if error else ""), flush=True)
    return rows


def table(rows: list[dict]) -> str:
    lines = ["| part | what | result | ok | part s |", "| --- | --- | --- | --- | ---: |"]
    for r in rows:
        cells = (r["part"], r["what"], r["result"], "yes" if r["ok"] else "NO", r.get("seconds", ""))
        lines.append("| " + " | ".join(str(c).replace("|", "/") for c in cells) + " |")
    return "\n".join(lines)


def write_results(path: str, rows: list[dict], argv: list[str], device: str) -> None:
    """Put this run's table at the top of the GPU-check section of a Markdown file (created if missing)."""
    from workbench.io import atomic_write_text

    p = Path(path)
    text = p.read_text(encoding="utf-8") if p.exists() else "# Benchmark results\n"
    if SECTION not in text:
        text = text.rstrip("\n") + f"\n\n{SECTION}\n\nOne run of the whole check (docs/kernels.md says how to run " \
            "it). Newest first.\n"
    entry = (f"\n### {datetime.date.today().isoformat()}, {device}\n\n"
             f"`python3 benchmarks/gpu_check.py {' '.join(argv)}`\n\n{table(rows)}\n")
    at = text.index(SECTION) + len(SECTION)
    nxt = text.find("\n## ", at)
    first = text.find("\n### ", at)
    insert = nxt if nxt != -1 else len(text)
    if first != -1 and (nxt == -1 or first < nxt):
        insert = first
    atomic_write_text(p, text[:insert].rstrip("\n") + "\n" + entry + text[insert:])


def prepare(folder: str) -> None:
    """Copy the configs and smollm2's tokenizer from the local model cache into folder (to carry to the GPU)."""
    from workbench.models.cache import model_dir

    for name, files in (("smollm2-135m", ("config.json", "generation_config.json", "tokenizer.json",
                                          "tokenizer_config.json", "chat_template.jinja")),
                        ("gemma3-270m", ("config.json", "generation_config.json"))):
        src, dst = model_dir(name), Path(folder) / name
        dst.mkdir(parents=True, exist_ok=True)
        for f in files:
            if (src / f).is_file():
                shutil.copy(src / f, dst / f)
    size = sum(f.stat().st_size for f in Path(folder).rglob("*") if f.is_file())
    print(f"{folder}: {size / 2**20:.1f} MiB (carry it: run(..., carry=['{folder}']))")


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--smoke", "--dry-run", action="store_true", help="the whole script on the CPU at tiny sizes")
    ap.add_argument("--assets", help="folder written by --prepare (configs, tokenizer)")
    ap.add_argument("--prepare", metavar="FOLDER", help="write the assets folder from the local cache and exit")
    ap.add_argument("--out", default=os.environ.get("OUT"), help="folder for gpu_check.json and the table")
    ap.add_argument("--results", help="put the table into this Markdown file (e.g. benchmarks/RESULTS.md)")
    ap.add_argument("--parts", nargs="+", default=list(PARTS), choices=list(PARTS))
    ap.add_argument("--budget", type=float, default=BUDGET_S, help="seconds for the whole check")
    ap.add_argument("--seed", type=int, default=int.from_bytes(os.urandom(3), "little"))
    ap.add_argument("--work", default=str(ROOT / "runs" / "gpu-check"), help="scratch folder")
    ap.add_argument("--part", help=argparse.SUPPRESS)
    ap.add_argument("--part-out", help=argparse.SUPPRESS)
    ap.add_argument("--part-budget", type=float, default=60, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.prepare:
        prepare(args.prepare)
        return 0
    Path(args.work).mkdir(parents=True, exist_ok=True)
    if args.part:  # inside one part's process: emit rows as they finish
        def emit(**row):
            with open(args.part_out, "a", encoding="utf-8") as f:
                f.write(json.dumps(row, default=str) + "\n")

        try:
            globals()[f"part_{args.part}"](args, emit)
        except Exception as e:  # noqa: BLE001 - reported by the orchestrator
            traceback.print_exc()
            print(f"{type(e).__name__}: {e}", file=sys.stderr)
            return 1
        return 0

    import torch

    if not torch.cuda.is_available() and not args.smoke:
        print("no CUDA GPU: use --smoke to run the whole check on the CPU at tiny sizes", file=sys.stderr)
        return 2
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU (smoke)"
    print(f"gpu_check on {device}; budget {args.budget:.0f} s; seed {args.seed}", flush=True)
    start = time.perf_counter()
    rows = []
    for name in args.parts:
        left = args.budget - (time.perf_counter() - start)
        if left < 10:
            rows.append(dict(part=name, what=PARTS[name][1], result="ERROR: skipped, no time left", ok=False))
            continue
        rows += run_part(name, args, min(PARTS[name][0] * (10 if args.smoke else 1), left))
    total = time.perf_counter() - start
    print(f"\ngpu_check on {device}: {total:.0f} s\n\n{table(rows)}\n", flush=True)
    if args.out:
        from workbench.io import atomic_write_json

        Path(args.out).mkdir(parents=True, exist_ok=True)
        atomic_write_json(Path(args.out) / "gpu_check.json", {"device": device, "seconds": total, "rows": rows})
    if args.results:
        write_results(args.results, rows, argv, device)
        print(f"wrote the table into {args.results}")
    return 0 if all(r["ok"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
