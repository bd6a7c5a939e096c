"""Score functions on synthetic patterns with known answers, and against loop references."""

import pytest
import torch

from workbench.scores import (copying_score, duplicate_token_score, induction_score, key_importance,
                              previous_token_score, sink_rate)
from workbench.stimuli import repeated_random_tokens
from tests.conftest import tiny_llama


def random_patterns(*lead, n=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(*lead, n, n, generator=g, dtype=torch.float64)
    s = s.masked_fill(torch.triu(torch.ones(n, n, dtype=torch.bool), 1), float("-inf"))
    return torch.softmax(s, -1)


def test_previous_token_perfect_and_loop_reference():
    n = 9
    perfect = torch.zeros(1, n, n)
    perfect[0, 0, 0] = 1
    perfect[0, torch.arange(1, n), torch.arange(n - 1)] = 1
    assert previous_token_score(perfect).item() == pytest.approx(1.0)
    pats = random_patterns(3, 2, n=n)  # (H=3, B=2, N, N)
    want = torch.tensor([[pats[h, b, i, i - 1] for b in range(2) for i in range(1, n)] for h in range(3)]).mean(1)
    assert torch.allclose(previous_token_score(pats), want)


def test_induction_and_duplicate_on_repeated_tokens():
    subject = tiny_llama()
    stim = repeated_random_tokens(subject, seq_len=6, n_repeats=3, batch=2, seed=1)
    ids, n = stim.input_ids, stim.input_ids.shape[1]
    assert n == 1 + 18
    # the stimulus: distinct tokens per block, identical blocks, BOS first; seeded
    assert torch.equal(ids[:, 1:7], ids[:, 7:13]) and torch.equal(ids[:, 1:7], ids[:, 13:19])
    assert all(len(set(r[1:7].tolist())) == 6 for r in ids)
    assert torch.equal(ids, repeated_random_tokens(subject, 6, 3, 2, seed=1).input_ids)
    assert not torch.equal(ids, repeated_random_tokens(subject, 6, 3, 2, seed=2).input_ids)
    tgt = stim.induction_target
    assert tgt[0, 7].item() == 2 and tgt[0, 18].item() == 13 and tgt[0, 6].item() == -1
    perfect = torch.zeros(2, n, n)
    for i in range(n):
        perfect[:, i, tgt[0, i] if tgt[0, i] >= 0 else 0] = 1
    assert induction_score(perfect, tgt).item() == pytest.approx(1.0)
    pats = random_patterns(4, 2, n=n, seed=3)
    loop = torch.zeros(4)
    for h in range(4):
        vals = [pats[h, b, i, tgt[b, i]] for b in range(2) for i in range(n) if tgt[b, i] >= 0]
        loop[h] = torch.stack(vals).mean()
    assert torch.allclose(induction_score(pats, tgt).float(), loop, atol=1e-6)
    dup_loop = torch.zeros(4)
    for h in range(4):
        vals = []
        for b in range(2):
            for i in range(n):
                earlier = [j for j in range(i) if ids[b, j] == ids[b, i]]
                if earlier:
                    vals.append(pats[h, b, i, earlier].sum())
        dup_loop[h] = torch.stack(vals).mean()
    assert torch.allclose(duplicate_token_score(pats, ids).float(), dup_loop, atol=1e-6)


def test_key_importance_and_sink_rate():
    pats = random_patterns(2, 5, n=10, seed=4)
    alpha = key_importance(pats)
    k = 3
    want = torch.stack([pats[..., i, k] for i in range(k, 10)], -1).sum(-1) / (10 - k)
    assert torch.allclose(alpha[..., k], want)
    sink = torch.zeros(1, 4, 6, 6)
    sink[..., 0] = 1.0  # every query attends to the first token
    sink[0, 3] = torch.eye(6)  # but the last sample attends to itself
    assert key_importance(sink)[0, 0, 0].item() == pytest.approx(1.0)
    assert sink_rate(sink, epsilon=0.3).item() == pytest.approx(0.75)


def test_copying_score_extremes():
    v, n = 50, 6
    ids = torch.tensor([[0, 11, 12, 13, 14, 15]])  # BOS then 5 distinct tokens
    attn = torch.zeros(1, 1, n)
    attn[..., 3] = 1.0  # attends to token 13
    logits = torch.randn(1, 1, v, generator=torch.Generator().manual_seed(0))
    up = logits.clone()
    up[..., 13] = 100.0
    down = logits.clone()
    down[..., 13] = -100.0
    assert copying_score(up, attn, ids).item() == pytest.approx(1 - 1 / v)
    assert copying_score(down, attn, ids).item() == pytest.approx(-1 + 1 / v)
    mid = torch.arange(v, dtype=torch.float32)[None, None]  # token 13 ranks 13th of 50
    assert copying_score(mid, attn, ids).item() == pytest.approx(2 * (13.5 / 50) - 1)
