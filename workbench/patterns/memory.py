"""Predicting what an exact attention capture needs, before running it."""

from __future__ import annotations

import torch

FLOAT32 = 4


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
