"""Predicting the peak memory of a forward pass with captures, before running it: upper bounds, per device.

A prediction counts everything alive at the peak: what the caller keeps (patterns, z, statistics, logits), the
model's own activations at that batch and length (residual stream, MLP intermediate, q/k/v and RoPE temporaries,
masks, logits of B x positions x vocab, KV cache), the temporaries of the captured layer (its exact patterns
and one query chunk of scores, or the kernels' chunk), and the allocator's overhead. The weights are excluded
(they are loaded already, so the free memory that a prediction is compared with has them counted).
The formulas and the measurements that check them are in docs/capture-memory.md.
"""

from __future__ import annotations

import ctypes
import functools
import sys
from dataclasses import dataclass, field

import torch

from ..models.attention import PATTERN_CHUNK_BYTES

FLOAT32 = 4
MEMORY_FRACTION = 0.5  # auto choices keep a predicted peak within this share of the free memory
MMAP_THRESHOLD = 1 << 20  # steady_allocator: blocks of 1 MiB or more are mapped and unmapped, never kept
CPU_OVERHEAD = 0.25  # heap blocks under 1 MiB and BLAS packing buffers, as a share of the model's own activations
FIXED_OVERHEAD = 40 << 20  # allocator and BLAS workspaces: measured 5-17 MiB beyond the activations of plain forwards


def available_bytes(device: torch.device) -> int:
    """Free memory on ``device``: CUDA's free bytes, or the host's MemAvailable (Linux) for the CPU."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 8 << 30  # unknown platform: assume 8 GiB


@functools.cache
def steady_allocator() -> bool:
    """On Linux with glibc, fix malloc's mmap threshold at 1 MiB (and the trim threshold at 2 MiB) for this process.

    Every block of 1 MiB or more (every tensor that matters) is then returned to the system when freed, so the
    RSS follows the live tensors that the predictions count. glibc's default raises the threshold to the largest
    block freed so far (up to 32 MiB) and keeps freed heap blocks mapped: captures then peaked at up to 2.3x their
    live bytes (docs/capture-memory.md). Called by every capture entry point; returns whether it applied.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.gnu_get_libc_version  # glibc only (musl has no mallopt thresholds)
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3
    return bool(libc.mallopt(m_mmap_threshold, MMAP_THRESHOLD)) and bool(libc.mallopt(m_trim_threshold, 2 * MMAP_THRESHOLD))


def pattern_bytes(batch: int, n_heads: int, n_queries: int, n_keys: int) -> int:
    """Bytes of float32 attention patterns for ``n_heads`` heads: batch x heads x Nq x Nk x 4."""
    return batch * n_heads * n_queries * n_keys * FLOAT32


def human(n: float) -> str:
    """Bytes as a short human-readable string (binary units)."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} TiB"


@dataclass(frozen=True)
class ModelDims:
    """The model facts a memory prediction needs, explicit so that it does not depend on how a Subject stores them."""

    n_layers: int
    n_heads: int
    n_kv_heads: int
    d_head: int
    d_model: int
    d_ff: int  # MLP intermediate size (0: attention-only)
    vocab: int
    sliding_layers: int = 0  # layers with a sliding window
    window: int | None = None
    act_bytes: int = FLOAT32  # bytes per activation (the model's dtype)

    @classmethod
    def of(cls, subject) -> "ModelDims":
        """The dimensions of a Subject's model (MLP size from its config; 4 x d_model if the config has none)."""
        d_ff = getattr(subject.model.config, "intermediate_size", None)
        return cls(n_layers=subject.n_layers, n_heads=subject.n_heads, n_kv_heads=subject.n_kv_heads,
                   d_head=subject.d_head, d_model=subject.d_model, d_ff=int(d_ff if d_ff is not None else 4 * subject.d_model),
                   vocab=subject.vocab_size, sliding_layers=len(subject.local_layers), window=subject.sliding_window,
                   act_bytes=torch.finfo(subject.dtype).bits // 8)

    @property
    def q_width(self) -> int:
        return self.n_heads * self.d_head

    @property
    def kv_width(self) -> int:
        return self.n_kv_heads * self.d_head


@dataclass
class Prediction:
    """Predicted peak growth of one pass: ``host`` (CPU RSS) and ``device`` (CUDA max_memory_allocated; 0 on a CPU)."""

    host: int
    device: int
    device_type: str
    terms: dict[str, int] = field(default_factory=dict)  # what the peak is made of (bytes)

    @property
    def peak(self) -> int:
        """The larger of the two (on a CPU, the host total)."""
        return max(self.host, self.device)

    def describe(self) -> str:
        """One line: the total and its largest terms."""
        parts = ", ".join(f"{k} {human(v)}" for k, v in sorted(self.terms.items(), key=lambda kv: -kv[1])[:4] if v)
        where = "" if self.device_type == "cpu" else f" host / {human(self.device)} {self.device_type}"
        return f"{human(self.host)}{where} ({parts})"


@dataclass(frozen=True)
class Budget:
    """What a pass may take: ``fraction`` of the free host memory, and of the free GPU memory when computing on one."""

    host_free: int
    device_free: int | None
    fraction: float = MEMORY_FRACTION

    @classmethod
    def now(cls, device: torch.device, fraction: float = MEMORY_FRACTION) -> "Budget":
        """The free memory right now on the host and on ``device``."""
        device = torch.device(device)
        return cls(available_bytes(torch.device("cpu")),
                   available_bytes(device) if device.type == "cuda" else None, fraction)

    def allows(self, p: Prediction) -> bool:
        """Whether the predicted peak fits on every device it uses."""
        ok = p.host <= self.fraction * self.host_free
        return ok and (p.device_type == "cpu" or self.device_free is None or p.device <= self.fraction * self.device_free)

    def describe(self) -> str:
        gpu = "" if self.device_free is None else f" / {human(self.fraction * self.device_free)} GPU"
        return f"{human(self.fraction * self.host_free)} host{gpu} ({self.fraction:.0%} of free)"

    def as_dict(self) -> dict:
        return {"free_host_bytes": int(self.host_free), "free_device_bytes": self.device_free, "fraction": self.fraction}


def exact_layer_bytes(batch: int, n_heads: int, n_queries: int, n_keys: int, d_head: int) -> int:
    """Transient bytes of models.attention.exact_patterns for ``n_heads`` heads: the float32 result (computed in
    place), the selected queries and keys, and one query chunk's negated visibility mask."""
    out = pattern_bytes(batch, n_heads, n_queries, n_keys)
    selected = batch * n_heads * (n_queries + n_keys) * d_head * FLOAT32
    row = pattern_bytes(batch, n_heads, 1, n_keys)
    chunk_rows = min(n_queries, max(1, PATTERN_CHUNK_BYTES // row))
    return out + selected + batch * chunk_rows * n_keys


def forward_peak(dims: ModelDims, batch: int, n_tokens: int, *, device_type: str = "cpu", n_logits: int | None = None,
                 kept: int = 0, layer_extra: int = 0, padded: bool = False, cache: bool = False) -> Prediction:
    """Predicted peak of one forward pass of ``batch`` x ``n_tokens`` (no grad) under hooks.

    ``n_logits``: positions per row whose logits the model computes (None: all; 1 with ``logits_to_keep=1``).
    ``kept``: bytes the hooks keep on the host by the end of the pass (they are all counted as alive at the peak).
    ``layer_extra``: bytes a hooked layer's attention call holds beyond the model's own (exact patterns, reductions,
    kernel chunks), freed before the next layer. ``padded``: an attention mask is passed (B x N x N masks in every
    layer). ``cache``: the KV cache is kept (prefill with ``use_cache=True``).
    """
    f, b, n = dims.act_bytes, batch, n_tokens
    t = b * n
    d, q, kv, ff = dims.d_model, dims.q_width, dims.kv_width, dims.d_ff
    n_logits = n if n_logits is None else n_logits
    # masks: bool (B|1, 1, N, N) per layer type that needs one, kept through the pass; SDPA turns the mask of a
    # masked layer into a float copy (+ its negation) while it runs
    sliding_masked = dims.sliding_layers > 0 and dims.window is not None and n > dims.window
    full_layers = dims.n_layers - dims.sliding_layers
    n_masks = (int(dims.sliding_layers > 0) + int(full_layers > 0)) if padded else int(sliding_masked)
    masks = n_masks * (b if padded else 1) * n * n
    sdpa_mask = 5 * b * n * n if n_masks else 0
    resident = 2 * t * d * f  # the embeddings (kept by the model's forward) and the current layer's input
    stages = {
        "attention": t * f * (d + 4 * q + 2 * kv) + sdpa_mask,  # normed input, q/k/v, RoPE temporaries
        "captured layer": t * f * (d + 2 * q + 2 * kv) + layer_extra if layer_extra else 0,  # q, k, v, z + hooks
        "mlp": t * f * (2 * d + 3 * ff),  # the attention block's output, normed input, gate/act, up, product
        "logits": t * d * f + b * n_logits * dims.vocab * max(f, FLOAT32),
    }
    stage = max(stages, key=stages.get)
    kv_cache = 0
    if cache:
        kept_tokens = dims.sliding_layers * min(n, dims.window or n) + full_layers * n
        kv_cache = 2 * b * kept_tokens * kv * f
    activations = resident + masks + stages[stage] + kv_cache
    if device_type == "cpu":
        own = activations - (layer_extra if stage == "captured layer" else 0)  # the model's own tensors
        overhead = FIXED_OVERHEAD + int(CPU_OVERHEAD * own)
        terms = {"kept": kept, f"activations ({stage})": activations, "allocator": overhead}
        return Prediction(host=kept + activations + overhead, device=0, device_type="cpu", terms=terms)
    overhead = FIXED_OVERHEAD
    terms = {"kept (host)": kept, f"activations ({stage})": activations, "allocator": overhead}
    return Prediction(host=kept + FIXED_OVERHEAD, device=activations + overhead, device_type=device_type, terms=terms)


def largest_step(predict, batch: int, budget: Budget) -> int:
    """The largest batch step in 1..batch whose prediction ``predict(step)`` the budget allows (0 if none)."""
    if budget.allows(predict(batch)):
        return batch
    lo, hi = 0, batch  # allows(lo) (or lo == 0), not allows(hi)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if budget.allows(predict(mid)):
            lo = mid
        else:
            hi = mid
    return lo
