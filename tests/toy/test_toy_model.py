"""Toy models: the HF model equals a float64 by-hand forward (softmax and sigmoid attention, RoPE and learned
positions, with and without MLPs), saves and loads as an HF folder, decodes with a KV cache, and every workbench
analysis (capture, scan, interventions) applies unchanged."""

import math

import pytest
import torch

import workbench as wb
from workbench.errors import InputError
from workbench.interventions import ZeroHead, apply
from workbench.patterns import capture
from workbench.toy import ToyConfig, build

VARIANTS = {
    "attn-only rope": {},
    "attn-only learned": {"positional": "learned"},
    "mlp gqa": {"intermediate_size": 48, "num_key_value_heads": 2},
    "sigmoid": {"attention_activation": "sigmoid"},
    "sigmoid mlp learned 3 layers": {"attention_activation": "sigmoid", "sigmoid_bias": -1.5, "intermediate_size": 32,
                                     "positional": "learned", "num_hidden_layers": 3},
}
SMALL = {"vocab_size": 40, "hidden_size": 32, "num_attention_heads": 4, "max_position_embeddings": 64}


def toy(seed=0, **fields):
    subject = build({**SMALL, **fields}, seed=seed)
    with torch.no_grad():  # break the symmetric init so that patterns are far from uniform
        for p in subject.model.parameters():
            p.normal_(0, 0.3) if p.ndim >= 2 else p.uniform_(0.5, 1.5)
    return subject


def rms(x, weight, eps):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight.double()


def rotate(x, theta):
    """Rotate-half RoPE by hand in float64: x (B, H, N, D)."""
    d, n = x.shape[-1], x.shape[-2]
    ang = torch.arange(n, dtype=torch.float64)[:, None] / theta ** (torch.arange(0, d, 2, dtype=torch.float64) / d)
    cos, sin = torch.cat([ang.cos(), ang.cos()], -1), torch.cat([ang.sin(), ang.sin()], -1)
    return x * cos + torch.cat([-x[..., d // 2:], x[..., :d // 2]], -1) * sin


def reference(model, ids):
    """Logits and per-layer attention weights (B, H, N, N) of a toy model, computed by hand in float64."""
    cfg, m = model.config, model.model
    w = lambda lin: lin.weight.double()  # noqa: E731
    n = ids.shape[1]
    x = m.embed_tokens.weight.double()[ids]
    if cfg.positional == "learned":
        x = x + m.embed_positions.weight.double()[:n]
    causal = torch.ones(n, n, dtype=torch.bool).tril()
    weights = []
    for layer in m.layers:
        a = layer.self_attn
        h = rms(x, layer.input_layernorm.weight, cfg.rms_norm_eps)
        split = lambda t: t.view(*ids.shape, -1, cfg.head_dim).transpose(1, 2)  # noqa: E731
        q, k, v = split(h @ w(a.q_proj).T), split(h @ w(a.k_proj).T), split(h @ w(a.v_proj).T)
        if cfg.positional == "rope":
            q, k = rotate(q, cfg.rope_parameters["rope_theta"]), rotate(k, cfg.rope_parameters["rope_theta"])
        group = cfg.num_attention_heads // cfg.num_key_value_heads
        k, v = k.repeat_interleave(group, 1), v.repeat_interleave(group, 1)
        scores = (q @ k.transpose(-1, -2)) / math.sqrt(cfg.head_dim)
        if cfg.attention_activation == "sigmoid":
            att = torch.sigmoid(scores + cfg.sigmoid_bias) * causal
        else:
            att = torch.softmax(scores.masked_fill(~causal, -math.inf), -1)
        weights.append(att)
        x = x + (att @ v).transpose(1, 2).reshape(*ids.shape, -1) @ w(a.o_proj).T
        if hasattr(layer, "mlp"):
            h = rms(x, layer.post_attention_layernorm.weight, cfg.rms_norm_eps)
            mlp = layer.mlp
            x = x + (torch.nn.functional.silu(h @ w(mlp.gate_proj).T) * (h @ w(mlp.up_proj).T)) @ w(mlp.down_proj).T
    return rms(x, m.norm.weight, cfg.rms_norm_eps) @ w(model.lm_head).T, weights


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_forward_and_patterns_match_float64_reference(variant):
    subject = toy(seed=1, **VARIANTS[variant])
    ids = torch.randint(4, 40, (2, 17), generator=torch.Generator().manual_seed(0))
    ref_logits, ref_weights = reference(subject.model, ids)
    cap = capture(subject, ids, logits=True)  # exact path (a pattern hook is active)
    plain = subject.logits(ids)  # no hook: SDPA for softmax, the exact sigmoid path otherwise
    subject.model.set_attn_implementation("eager")
    try:
        eager = subject.logits(ids)
    finally:
        subject.model.set_attn_implementation("workbench")
    for got in (cap.logits, plain, eager):
        assert (got.double() - ref_logits).abs().max() < 1e-4
    for layer, ref in enumerate(ref_weights):
        assert (cap.patterns[layer].double() - ref).abs().max() < 1e-5
    row_sums = cap.patterns[0].sum(-1)
    if VARIANTS[variant].get("attention_activation") == "sigmoid":
        assert (row_sums[..., 1:] - 1).abs().max() > 0.1  # unnormalised: rows do not sum to 1
    else:
        assert torch.allclose(row_sums, torch.ones_like(row_sums), atol=1e-5)


@pytest.mark.parametrize("variant", ["attn-only rope", "sigmoid mlp learned 3 layers"])
def test_kv_cache_decoding_matches_full_forward(variant):
    subject = toy(seed=2, **VARIANTS[variant])
    ids = torch.randint(4, 40, (1, 12), generator=torch.Generator().manual_seed(1))
    full = subject.logits(ids)[0]
    with torch.no_grad():
        out = subject.model(input_ids=ids[:, :7], use_cache=True)
        steps = [out.logits[0, -1]]
        cache = out.past_key_values
        for t in range(7, 12):
            out = subject.model(input_ids=ids[:, t:t + 1], past_key_values=cache, use_cache=True)
            cache = out.past_key_values
            steps.append(out.logits[0, -1])
    assert (torch.stack(steps[:-1]) - full[6:11]).abs().max() < 1e-4
    subject.generate("t1 t2 t3", max_new_tokens=3)  # GenerationMixin path runs


def test_save_and_load_roundtrip(tmp_path):
    from workbench.toy.train import save_model

    subject = toy(seed=3, **VARIANTS["sigmoid mlp learned 3 layers"])
    save_model(subject.model, subject.tokenizer, tmp_path)
    loaded = wb.load(str(tmp_path))
    assert loaded.model.config.attention_activation == "sigmoid" and loaded.positional == "learned"
    assert loaded.model.config.sigmoid_bias == -1.5
    assert (loaded.n_layers, loaded.n_heads, loaded.d_head) == (3, 4, 8)
    ids = torch.randint(4, 40, (2, 9))
    assert torch.allclose(loaded.logits(ids), subject.logits(ids), atol=1e-6)
    assert loaded.to_str_tokens(loaded.encode("t0 t5", prepend_bos=True)) == ["<bos>", "t0", "t5"]


@pytest.mark.parametrize("variant", ["attn-only rope", "sigmoid"])
def test_scan_and_interventions_apply_unchanged(variant):
    subject = toy(seed=4, **VARIANTS[variant])
    atlas = wb.scan(subject, ["previous_token", "induction", "sink"], settings={"seq_len": 12, "batch": 3,
                                                                               "sink_batch": 3, "sink_tokens": 16})
    assert atlas.matrix("induction").shape == (2, 4)
    assert 0 <= atlas.matrix("previous_token").min() and atlas.matrix("previous_token").max() <= 1
    ids = torch.randint(4, 40, (1, 10))
    before = subject.logits(ids)
    with apply(subject, ZeroHead([(1, 0), (1, 1), (1, 2), (1, 3)])):
        ablated = subject.logits(ids)
    # by hand: zero layer 1's attention output entirely
    layer = subject.model.model.layers[1].self_attn
    saved = layer.o_proj.weight.data.clone()
    layer.o_proj.weight.data.zero_()
    try:
        by_hand = subject.logits(ids)
    finally:
        layer.o_proj.weight.data.copy_(saved)
    assert (ablated - by_hand).abs().max() < 1e-5 and (ablated - before).abs().max() > 1e-2


def test_bad_config_names_the_field():
    with pytest.raises(InputError, match="positional='alibi'"):
        ToyConfig(positional="alibi")
    with pytest.raises(InputError, match="attention_activation"):
        ToyConfig(attention_activation="relu")
    with pytest.raises(InputError, match="KV heads must divide"):
        ToyConfig(num_attention_heads=4, num_key_value_heads=3)
