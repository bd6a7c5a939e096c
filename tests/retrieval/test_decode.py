"""Greedy KV-cache decoding with top-1 key recording, checked against uncached full forwards."""

from __future__ import annotations

import pytest
import torch

from tests.conftest import tiny_gemma3, tiny_llama
from workbench.errors import InputError
from workbench.interventions import ZeroQuery, apply
from workbench.models.decoding import prefill
from workbench.patterns import capture
from workbench.retrieval.decode import decode
from workbench.retrieval.niah import run_conditions
from workbench.stimuli.niah import Needle, NeedleTest


def _prompts(seed=0, batch=3, n=12, vocab=96):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(4, vocab, (batch, n), generator=g)
    ids[:, 0] = 1  # BOS
    return ids


def _greedy_reference(subject, ids, steps, specs=()):
    """Greedy continuation by full uncached forwards (the obviously-right loop)."""
    out = ids.clone()
    with apply(subject, *specs):
        for _ in range(steps):
            nxt = subject.model(input_ids=out, use_cache=False).logits[:, -1].argmax(-1)
            out = torch.cat([out, nxt[:, None]], 1)
    return out[:, ids.shape[1]:]


@pytest.mark.parametrize("make", [tiny_llama, tiny_gemma3])
def test_decode_matches_uncached_greedy_and_exact_top_keys(make):
    subject = make()
    ids = _prompts()
    out = decode(subject, prefill(subject, ids), max_new_tokens=5, stop_at_newline=False, record=True)
    ref = _greedy_reference(subject, ids, 5)
    full = torch.cat([ids, ref], 1)
    cap = capture(subject, full)
    for row in range(ids.shape[0]):
        gen = torch.tensor(out.tokens[row])
        n = len(gen)  # stops at EOS / special tokens
        assert gen.tolist() == ref[row, :n].tolist()
        assert out.top_keys[row].shape == (n, subject.n_layers, subject.n_heads)
        for layer in range(subject.n_layers):
            # step t's query is the token at position N-1+t; its exact attention row gives the top key
            rows = cap.patterns[layer][row, :, ids.shape[1] - 1:ids.shape[1] - 1 + n]  # (H, n, Nk)
            assert torch.equal(out.top_keys[row][:, layer], rows.argmax(-1).T)


def test_masked_decode_matches_masked_reference_and_prefill_is_shared():
    subject = tiny_llama(seed=3)
    ids = _prompts(seed=1)
    heads = [(0, 1), (1, 2), (1, 3)]
    with apply(subject, ZeroQuery(heads)):
        state = prefill(subject, ids)
    masked = decode(subject, state, max_new_tokens=4, stop_at_newline=False, mask_heads=heads)
    ref = _greedy_reference(subject, ids, 4, [ZeroQuery(heads)])
    for row, toks in enumerate(masked.tokens):
        assert toks == ref[row, :len(toks)].tolist()
    # a shared prefill is not consumed: decoding twice from it gives the same answer
    state = prefill(subject, ids)
    a = decode(subject, state, max_new_tokens=4, stop_at_newline=False, mask_heads=heads)
    b = decode(subject, state, max_new_tokens=4, stop_at_newline=False, mask_heads=heads)
    intact = decode(subject, state, max_new_tokens=4, stop_at_newline=False)
    assert a.tokens == b.tokens
    assert intact.tokens == [r[:len(t)].tolist() for r, t in zip(_greedy_reference(subject, ids, 4), intact.tokens)]


def test_run_conditions_batching_does_not_change_results():
    subject = tiny_llama(seed=1)
    needle = Needle("w10 w11 w12", "w13 w14", "w11 w12")
    tests = []
    for i, ids in enumerate(_prompts(seed=2, batch=5, n=16)):
        ids[5:8] = torch.tensor([14, 15, 16])  # the needle's ids (w10 = id 14)
        tests.append(NeedleTest(ids, 16, 50.0, 50.0, needle, 0, (5, 8), (6, 8), "random"))
    conditions = {"intact": [], "masked": [(0, 0), (1, 1)]}
    one = run_conditions(subject, tests, conditions, record=True, max_new_tokens=3, batch_size=1)
    many = run_conditions(subject, tests, conditions, record=True, max_new_tokens=3, batch_size=4)
    for name in conditions:
        assert one[name].table["response"].tolist() == many[name].table["response"].tolist()
        assert (one[name].head_scores == many[name].head_scores).all()
        assert one[name].head_scores.shape == (5, 2, 4)
    assert one["masked"].settings["masked"] == [[0, 0], [1, 1]]
    with pytest.raises(InputError, match="use lengths up to"):  # refused before any prefill
        run_conditions(subject, tests, conditions, max_new_tokens=subject.context_limit)
