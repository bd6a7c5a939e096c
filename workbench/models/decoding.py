"""Greedy decoding with the KV cache, the model-level parts: prefill a batch, recognise stop tokens, read the answer.

The prompt minus its last token is prefilled once (its logits are not computed); each decoding step then feeds
one token with the cache. Loops that decode (retrieval's NIAH ``decode``, DeCoRe's ``contrastive_generate``)
build on these; to prefill with heads masked, wrap the call in ``workbench.interventions.apply``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import InputError


@dataclass
class Prefilled:
    """A batch of equal-length prompts after the prefill of all but their last token."""

    input_ids: torch.Tensor  # (B, N) on the model's device
    cache: object


@torch.no_grad()
def prefill(subject, input_ids: torch.Tensor) -> Prefilled:
    """Run all but the last token of each prompt (B, N >= 2) through the model, keeping the KV cache."""
    ids = torch.as_tensor(input_ids)
    ids = ids[None] if ids.ndim == 1 else ids
    if ids.ndim != 2 or ids.shape[1] < 2:
        raise InputError(f"decoding needs prompts of at least 2 tokens as a (batch, tokens) tensor, got {tuple(ids.shape)}")
    ids = subject.as_batch(ids)["input_ids"]
    out = subject.model(input_ids=ids[:, :-1], use_cache=True, **subject.logits_kwargs(False))
    return Prefilled(ids, out.past_key_values)


class StopTokens:
    """``stops(token)``: whether greedy decoding ends at this token (EOS, any special token, or a newline if asked)."""

    def __init__(self, subject, stop_at_newline: bool = True):
        self.tokenizer, self.stop_at_newline = subject.tokenizer, stop_at_newline
        self.special = set(getattr(self.tokenizer, "all_special_ids", []) or [])
        self.seen: dict[int, bool] = {}

    def __call__(self, token: int) -> bool:
        if token not in self.seen:
            self.seen[token] = (token == self.tokenizer.eos_token_id or token in self.special
                                or (self.stop_at_newline and "\n" in self.tokenizer.decode([token])))
        return self.seen[token]


def response_text(subject, tokens: list[int], stop_at_newline: bool = True) -> str:
    """The decoded answer: special tokens dropped, cut at the first newline if asked, stripped."""
    text = subject.tokenizer.decode(tokens, skip_special_tokens=True)
    return (text.split("\n")[0] if stop_at_newline else text).strip()
