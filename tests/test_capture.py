"""Exact capture: patterns match HF's eager attention and a by-hand float64 recomputation."""

import math

import pytest
import torch

from workbench.errors import CaptureMemoryError, InputError
from workbench.patterns import Budget, ModelDims, capture, predict_capture, select_heads
from tests.conftest import tiny_gemma3, tiny_llama


def eager_patterns(subject, batch):
    """Patterns from transformers' own eager implementation (output_attentions=True), float64."""
    model = subject.model.double()
    model.set_attn_implementation("eager")
    try:
        out = model(**batch, output_attentions=True, use_cache=False)
        return [a.float() for a in out.attentions]
    finally:
        model.set_attn_implementation("workbench")
        model.float()


@pytest.mark.parametrize("make", [tiny_llama, tiny_gemma3])
def test_patterns_match_eager(make):
    subject = make(seed=3)
    ids = torch.randint(4, subject.vocab_size, (2, 19))
    mask = torch.ones_like(ids)
    mask[1, 13:] = 0  # right padding in the second row
    batch = {"input_ids": ids, "attention_mask": mask}
    cap = capture(subject, batch)
    # reference: each row alone, without its padding, through transformers' eager attention in float64
    refs = [eager_patterns(subject, {"input_ids": ids[i:i + 1, :n]}) for i, n in enumerate([19, 13])]
    for layer in range(subject.n_layers):
        for i, n in enumerate([19, 13]):
            got = cap.patterns[layer][i, :, :n, :n]
            err = (got - refs[i][layer][0]).abs().max().item()
            assert err < 1e-5, (layer, i, err)
            assert cap.patterns[layer][i, :, :n, n:].abs().sum() == 0  # nothing on padding keys
        sums = cap.patterns[layer][1].sum(-1)
        assert torch.allclose(sums[:, :13], torch.ones_like(sums[:, :13]), atol=1e-5)


def test_sliding_window_is_respected():
    subject = tiny_gemma3(seed=1, window=4)
    ids = torch.randint(4, subject.vocab_size, (1, 12))
    cap = capture(subject, ids)
    q = torch.arange(12)[:, None]
    k = torch.arange(12)[None, :]
    outside = (k <= q - 4) | (k > q)
    assert cap.patterns[0][0, :, outside].abs().max() == 0  # local layer: nothing outside the window
    assert cap.patterns[2][0, :, (k <= q - 4) & (k <= q)].sum() > 0  # global layer sees far keys


def rope_by_hand(x, positions, theta):
    """Rotate-half RoPE in float64: x (N, D)."""
    d = x.shape[-1]
    inv = 1.0 / (theta ** (torch.arange(0, d, 2, dtype=torch.float64) / d))
    ang = positions[:, None].double() * inv[None, :]
    cos, sin = torch.cat([ang.cos(), ang.cos()], -1), torch.cat([ang.sin(), ang.sin()], -1)
    x1, x2 = x[..., : d // 2], x[..., d // 2:]
    return x * cos + torch.cat([-x2, x1], -1) * sin


def test_patterns_match_hand_recomputation_from_hooked_qk():
    subject = tiny_llama(seed=5, n_heads=6, n_kv=2)
    ids = torch.randint(4, subject.vocab_size, (1, 23))
    seen = {}
    attn = subject.model.model.layers[1].self_attn
    handles = [attn.q_proj.register_forward_hook(lambda m, i, o: seen.__setitem__("q", o)),
               attn.k_proj.register_forward_hook(lambda m, i, o: seen.__setitem__("k", o))]
    try:
        cap = capture(subject, ids, layers=[1])
    finally:
        for h in handles:
            h.remove()
    d = subject.d_head
    theta = subject.model.config.rope_parameters["rope_theta"]
    pos = torch.arange(23)
    q = seen["q"][0].double().view(23, subject.n_heads, d)
    k = seen["k"][0].double().view(23, subject.n_kv_heads, d)
    for h in range(subject.n_heads):
        qh = rope_by_hand(q[:, h], pos, theta)
        kh = rope_by_hand(k[:, h // 3], pos, theta)
        s = qh @ kh.T / math.sqrt(d)
        s = s.masked_fill(torch.triu(torch.ones(23, 23, dtype=torch.bool), 1), -math.inf)
        want = torch.softmax(s, -1)
        assert (cap.pattern(1, h)[0].double() - want).abs().max() < 1e-5


def test_head_selection_and_rows(llama):
    ids = torch.randint(4, llama.vocab_size, (2, 10))
    full = capture(llama, ids)
    part = capture(llama, ids, heads=[(1, 3), (0, 1)], rows=[2, 9])
    assert part.heads == {0: [1], 1: [3]}
    assert torch.allclose(part.pattern(1, 3), full.pattern(1, 3)[:, [2, 9]])
    with pytest.raises(InputError, match="out of range"):
        capture(llama, ids, heads=[(2, 0)])
    with pytest.raises(InputError, match="not captured"):
        part.pattern(0, 0)


def test_capture_splits_the_batch_or_refuses_what_does_not_fit(llama):
    sel = select_heads(llama)
    dims = ModelDims.of(llama)
    whole = predict_capture(dims, sel, batch=4, n_tokens=100)
    assert whole.terms["kept"] == 4 * 8 * 100 * 100 * 4  # every head's patterns, float32
    # two query rows kept: the per-step transients (each layer's full patterns, activations) dominate, so a budget
    # between the predictions of steps of 2 and 3 rows makes capture run two steps of two rows
    ids, rows = torch.randint(4, 90, (4, 100)), [50, 99]
    two, three = (predict_capture(dims, sel, batch=4, n_tokens=100, n_rows=2, step=s) for s in (2, 3))
    assert two.host < three.host
    budget = Budget(host_free=int((two.host + three.host) / 2 / 0.5), device_free=None)
    cap = capture(llama, ids, rows=rows, z=True, budget=budget)
    assert cap.memory["batch_size"] == 2
    ref = capture(llama, ids, rows=rows, z=True, batch_size=4, budget=Budget(1 << 40, None))
    for layer in ref.patterns:
        torch.testing.assert_close(cap.patterns[layer], ref.patterns[layer], rtol=0, atol=1e-6)
        torch.testing.assert_close(cap.z[layer], ref.z[layer], rtol=0, atol=1e-6)
    with pytest.raises(CaptureMemoryError, match=r"needs .* at its peak, but the budget is .*capture_stats"):
        capture(llama, ids, budget=Budget(host_free=4096, device_free=None))


def test_bad_input(llama):
    with pytest.raises(InputError, match="empty"):
        capture(llama, "   ")
    with pytest.raises(InputError, match="at most 512"):
        capture(llama, torch.randint(4, 90, (1, 600)))


@pytest.mark.parametrize("make", [tiny_llama, tiny_gemma3])
def test_passes_without_logits_project_only_the_last_position(make):
    """capture(logits=False), capture_stats and the NIAH prefill skip the N x vocab logits (262k vocab on gemma3)."""
    from workbench.kernels import AttentionStatsRequest
    from workbench.patterns import capture_stats
    from workbench.models.decoding import prefill

    subject = make(seed=1)
    rows = []
    handle = subject.model.get_output_embeddings().register_forward_hook(lambda m, i, o: rows.append(o.shape[1]))
    try:
        ids = torch.randint(4, subject.vocab_size, (2, 11))
        with_logits = capture(subject, ids, logits=True)
        without = capture(subject, ids)
        capture_stats(subject, ids, AttentionStatsRequest(first_k=1))
        prefill(subject, ids)
    finally:
        handle.remove()
    assert rows == [11, 1, 1, 1]
    assert with_logits.logits.shape == (2, 11, subject.vocab_size) and without.logits is None
    for layer in without.patterns:
        torch.testing.assert_close(without.patterns[layer], with_logits.patterns[layer], rtol=0, atol=0)
