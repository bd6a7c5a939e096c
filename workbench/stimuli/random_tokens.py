"""Random-token stimuli: BOS + random tokens, optionally repeated (Olsson et al. 2022's induction set-up)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import InputError


def token_pool(subject, skip_frequent: float = 0.01, skip_rare: float = 0.1) -> torch.Tensor:
    """Token ids to sample from: the vocabulary minus special tokens, the most and the least common.

    Frequency proxy: BPE merge rank (low ids are the commonest merges, high ids the rarest), so
    the lowest ``skip_frequent`` and highest ``skip_rare`` fractions of ids are excluded.
    """
    vocab = len(subject.tokenizer) if hasattr(subject.tokenizer, "__len__") else subject.vocab_size
    vocab = min(vocab, subject.vocab_size)
    lo, hi = int(vocab * skip_frequent), int(vocab * (1 - skip_rare))
    special = set(getattr(subject.tokenizer, "all_special_ids", []) or [])
    pool = torch.tensor([i for i in range(lo, hi) if i not in special], dtype=torch.long)
    if len(pool) < 2:
        raise InputError(f"{subject.name}'s vocabulary is too small to sample random tokens from")
    return pool


def random_token_ids(subject, batch: int, length: int, seed: int, distinct: bool = True) -> torch.Tensor:
    """(batch, length) random ids from :func:`token_pool`; ``distinct`` = no token twice within a row."""
    pool = token_pool(subject)
    if distinct and length > len(pool):
        raise InputError(f"cannot draw {length} distinct tokens from a pool of {len(pool)}")
    gen = torch.Generator().manual_seed(seed)
    if distinct:
        rows = [pool[torch.randperm(len(pool), generator=gen)[:length]] for _ in range(batch)]
        return torch.stack(rows)
    return pool[torch.randint(len(pool), (batch, length), generator=gen)]


@dataclass
class RepeatedTokens:
    """BOS + a random block of ``seq_len`` distinct tokens repeated ``n_repeats`` times.

    ``prev[b, i]``: position of the previous occurrence of token i (-1 if none);
    ``induction_target[b, i] = prev + 1`` (the token that followed it last time; -1 if none).
    """

    input_ids: torch.Tensor
    seq_len: int
    n_repeats: int
    offset: int  # 1 with a BOS in front, else 0
    seed: int

    @property
    def prev(self) -> torch.Tensor:
        n = self.input_ids.shape[1]
        pos = torch.arange(n)
        prev = pos - self.seq_len
        prev[pos < self.offset + self.seq_len] = -1
        return prev.expand(self.input_ids.shape[0], n).clone()

    @property
    def induction_target(self) -> torch.Tensor:
        prev = self.prev
        return torch.where(prev >= 0, prev + 1, prev)

    @property
    def repeat_queries(self) -> torch.Tensor:
        """Bool (N,): positions in the second and later repeats."""
        return torch.arange(self.input_ids.shape[1]) >= self.offset + self.seq_len

    def settings(self) -> dict:
        return {"kind": "repeated_random_tokens", "seq_len": self.seq_len, "n_repeats": self.n_repeats,
                "batch": int(self.input_ids.shape[0]), "bos": bool(self.offset), "seed": self.seed}


def repeated_random_tokens(subject, seq_len: int = 50, n_repeats: int = 2, batch: int = 10,
                           seed: int = 0, bos: bool = True) -> RepeatedTokens:
    """Seeded repeated-random-token batch (ARENA default: 50 tokens x 2, batch 10; Olsson: 25 x 4)."""
    if seq_len < 2 or n_repeats < 2 or batch < 1:
        raise InputError("repeated tokens need seq_len >= 2, n_repeats >= 2 and batch >= 1")
    block = random_token_ids(subject, batch, seq_len, seed)
    ids = block.repeat(1, n_repeats)
    use_bos = bos and subject.bos_token_id is not None
    if use_bos:
        ids = torch.cat([torch.full((batch, 1), subject.bos_token_id, dtype=torch.long), ids], dim=1)
    subject.check_length(ids.shape[1])
    return RepeatedTokens(ids, seq_len, n_repeats, int(use_bos), seed)
