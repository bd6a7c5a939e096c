"""Every supported architecture, end to end: a tiny random model saved with save_pretrained and loaded with
``wb.load(folder)`` behaves exactly like the same weights under transformers' eager attention.

Per architecture: logits (float32, <= 1e-5) and attention patterns (<= 1e-6) equal eager; streamed statistics
equal statistics of those patterns; ZeroHead / ScaleHead / ZeroQuery equal a forward hook on the eager model's
own modules (the test's table in cases.py, not the workbench's); direct logits equal the norm-folding formula;
the scan runs every default detector; KV-cache generation equals the eager model's and a cache-free greedy
loop; the sweep suffix from a cached residual equals a full forward; TransformerLens's bridge and nnsight give
the same numbers. GPT-J (no AttentionInterface) gets the clear error.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
import transformers as T

import workbench as wb
from tests.architectures.cases import CASES, VOCAB, WINDOW, gptj_config, head_slice, module, randomise
from tests.conftest import tiny_llama, tiny_tokenizer
from workbench.detectors import DEFAULT_DETECTORS
from workbench.errors import UnsupportedModelError
from workbench.interventions import ScaleHead, ZeroHead, ZeroQuery, apply, nnsight_edit, tl_apply
from workbench.kernels import AttentionStatsRequest, log_lag_edges
from workbench.models import attention, from_model
from workbench.models.architecture import TESTED
from workbench.patterns import capture, capture_stats
from workbench.sweeps.residual import embed, logits_from, residual

N = 12  # tokens per test sequence (> the sliding window)
SMALL_SCAN = {"batch": 2, "seq_len": 8, "sink_batch": 2, "sink_tokens": 10, "copy_batch": 2, "copy_queries": 4}


def save(model, folder):
    model.save_pretrained(folder)
    tiny_tokenizer(VOCAB).save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module", params=CASES, ids=[c.name for c in CASES])
def arch(request, tmp_path_factory):
    case = request.param
    torch.manual_seed(0)
    folder = save(randomise(T.AutoModelForCausalLM.from_config(case.config)), tmp_path_factory.mktemp(case.name))
    subject = wb.load(folder, device="cpu")
    eager = T.AutoModelForCausalLM.from_pretrained(folder, attn_implementation="eager").eval()
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(4, VOCAB, (2, N), generator=g)
    return SimpleNamespace(case=case, subject=subject, eager=eager, folder=folder, ids=ids)


def eager_logits(a, ids=None, hooks=(), **kwargs):
    """The eager model's logits with forward hooks [(path, pre, fn)] on its modules."""
    handles = [module(a.eager, path).register_forward_pre_hook(fn) if pre else
               module(a.eager, path).register_forward_hook(fn) for path, pre, fn in hooks]
    try:
        with torch.no_grad():
            return a.eager(input_ids=a.ids if ids is None else ids, **kwargs).logits.float()
    finally:
        for h in handles:
            h.remove()


def test_every_tested_architecture_has_a_case():
    assert sorted(c.model_type for c in CASES) == sorted(t for t, _ in TESTED)


def test_architecture_table_finds_the_parts(arch):
    s, c = arch.subject, arch.case
    assert s.arch.model_type == c.model_type
    for i in range(s.n_layers):
        layer = module(s.model, c.layer.format(i=i))
        assert s.layers[i] is layer
        assert s.output_projection(i) is module(layer, c.out_proj)
        assert s.attention_module(i) is module(layer, c.out_proj.rsplit(".", 1)[0])
    assert s.arch.final_norm.path == c.final_norm
    assert (s.arch.final_norm.kind, s.arch.final_norm.offset) == {"layer": ("layer", 0), "rms": ("rms", 0),
                                                                  "rms1p": ("rms", 1)}[c.norm]
    assert (s.arch.post_attention_norm and s.arch.post_attention_norm.path) == c.post_norm
    sliding = {"mistral": ["sliding", "sliding"], "gemma2": ["sliding", "full"], "gemma3": ["sliding", "full"]}
    assert s.layer_types == sliding.get(c.name, ["full", "full"])
    assert s.sliding_window == (WINDOW if c.name in sliding else None)
    assert s.arch.attn_softcap == (2.0 if c.name == "gemma2" else None)
    assert s.positional == {"gpt2": "learned", "opt": "learned", "gpt_neox": "partial_rope",
                            "phi3": "partial_rope"}.get(c.name, "rope")


def test_logits_equal_eager(arch, monkeypatch):
    mask = torch.ones_like(arch.ids)
    mask[1, N - 3:] = 0  # right padding in the second row
    ours = arch.subject.logits({"input_ids": arch.ids, "attention_mask": mask})
    want = eager_logits(arch, attention_mask=mask)
    real = mask.bool()
    assert (ours - want)[real].abs().max() <= 1e-5
    if arch.case.name == "gemma2":  # the attention soft-cap is applied, not skipped, also in query blocks
        monkeypatch.setattr(attention, "EXACT_BLOCK_BYTES", 1)  # one query row per block
        blocked = arch.subject.logits({"input_ids": arch.ids, "attention_mask": mask})
        assert (blocked - want)[real].abs().max() <= 1e-5
        uncapped = T.AutoModelForCausalLM.from_pretrained(arch.folder, attn_implementation="eager",
                                                          attn_logit_softcapping=None).eval()
        with torch.no_grad():
            assert (uncapped(input_ids=arch.ids).logits - ours).abs().max() > 1e-2


def test_capture_equals_eager_output_attentions(arch):
    cap = capture(arch.subject, arch.ids)
    with torch.no_grad():
        want = arch.eager(input_ids=arch.ids, output_attentions=True).attentions
    for layer in range(arch.subject.n_layers):
        assert (cap.patterns[layer] - want[layer].float()).abs().max() <= 1e-6


def test_streamed_statistics_equal_statistics_of_the_patterns(arch):
    s, n = arch.subject, N
    rows = torch.tensor([2, n - 1])
    req = AttentionStatsRequest(entropy=True, first_k=2, lag_bins=log_lag_edges(n), rows=rows)
    stats = capture_stats(s, arch.ids, req)
    cap = capture(s, arch.ids)
    lag = torch.arange(n)[:, None] - torch.arange(n)[None, :]
    edges = req.lag_bins.tolist()
    for layer in range(s.n_layers):
        a = cap.patterns[layer].double()
        want = {"entropy": -torch.xlogy(a, a).sum(-1), "first_k_mass": a[..., :2].sum(-1), "rows": a[:, :, rows],
                "lag_mass": torch.stack([(a * ((lag >= lo) & (lag < hi))).sum(-1)
                                         for lo, hi in zip(edges, edges[1:])], -1)}
        for name, value in want.items():
            assert torch.allclose(stats.stats[layer][name].double(), value, atol=1e-5), (layer, name)


def _slice_hook(sl, factor, pre):
    def fn(mod, args, *out):
        x = (args[0] if pre else out[0]).clone()
        x[..., sl] = x[..., sl] * factor
        return (x, *args[1:]) if pre else x
    return fn


@pytest.mark.parametrize("kind", ["zero_head", "scale_head", "zero_query"])
def test_interventions_equal_a_hook_on_the_models_own_modules(arch, kind):
    s, c, d = arch.subject, arch.case, arch.subject.d_head
    layer, head = (1, 2) if kind != "scale_head" else (0, 1)
    path = c.layer.format(i=layer) + "."
    if kind == "zero_query":
        spec = ZeroQuery([(layer, head)])
        ref = [(path + c.query, False, _slice_hook(head_slice(c.query_layout, head, d), 0.0, pre=False))]
    else:
        factor = 0.0 if kind == "zero_head" else 2.5
        spec = ZeroHead([(layer, head)]) if kind == "zero_head" else ScaleHead([(layer, head)], factor=factor)
        ref = [(path + c.out_proj, True, _slice_hook(slice(head * d, (head + 1) * d), factor, pre=True))]
    with apply(s, spec):
        ours = s.logits(arch.ids)
    want = eager_logits(arch, hooks=ref)
    assert (ours - want).abs().max() <= 1e-5
    assert (want - eager_logits(arch)).abs().max() > 1e-3  # the edit does something


def test_direct_logits_fold_the_norms(arch):
    """W_U (g * P (g' * W_O[h] z_h)): the output projection run on one head's z (bias removed), the post-attention
    norm's gain, the final norm's centring (LayerNorm) and gain, then the unembedding."""
    s, c, d = arch.subject, arch.case, arch.subject.d_head
    layer = 1
    z = capture(s, arch.ids, z=True, patterns=False, layers=[layer]).z[layer]  # (B, N, H, D)
    got = s.direct_logits(layer, z)  # (H, B, N, V)
    out = module(arch.eager, c.layer.format(i=layer) + "." + c.out_proj)

    def gain(mod, kind):
        return mod.weight.float() + (1.0 if kind == "rms1p" else 0.0)

    w_u = arch.eager.get_output_embeddings().weight.float()
    final = module(arch.eager, c.final_norm)
    for head in range(s.n_heads):
        x = torch.zeros(*z.shape[:2], s.n_heads * d)
        x[..., head * d:(head + 1) * d] = z[:, :, head]
        with torch.no_grad():
            part = out(x) - out(torch.zeros_like(x))
            if c.post_norm:
                part = gain(module(arch.eager, c.layer.format(i=layer) + "." + c.post_norm), c.post_kind) * part
            uncentred = gain(final, c.norm) * part @ w_u.T
            if c.norm == "layer":
                part = part - part.mean(-1, keepdim=True)
            want = gain(final, c.norm) * part @ w_u.T
        scale = want.abs().max()
        assert (got[head] - want).abs().max() <= 1e-5 * scale
        if c.norm == "layer":  # the centring matters: leaving it out would fail this test
            assert (got[head] - uncentred).abs().max() > 1e-2 * scale


def test_scan_runs_every_default_detector(arch):
    atlas = wb.scan(arch.subject, settings=SMALL_SCAN)
    assert atlas.meta["detectors"] == list(DEFAULT_DETECTORS)
    for column in atlas.score_columns:
        assert np.isfinite(atlas.matrix(column)).all(), column


def test_kv_cache_generation_equals_plain_generation(arch):
    s, prompt, steps = arch.subject, arch.ids[:1, :5], 9
    kwargs = dict(attention_mask=torch.ones_like(prompt), max_new_tokens=steps, do_sample=False, pad_token_id=0)
    with torch.no_grad():
        ours = s.model.generate(prompt, **kwargs)
        eager = arch.eager.generate(prompt, **kwargs)
    assert torch.equal(ours, eager)
    seq = prompt
    for _ in range(steps):  # no cache: the whole sequence every step
        seq = torch.cat([seq, s.logits(seq)[:, -1].argmax(-1, keepdim=True)], dim=1)
        if seq[0, -1] == s.model.generation_config.eos_token_id:
            break
    assert torch.equal(ours, seq)


def test_suffix_from_cached_residual_equals_full_forward(arch):
    s, mask = arch.subject, torch.ones_like(arch.ids)
    full = s.logits(arch.ids)
    for start in range(s.n_layers + 1):  # start = n_layers: the stream after the last layer, logits from the final norm
        hidden = residual(s, embed(s, arch.ids), mask, 0, start)
        assert (logits_from(s, hidden, mask, start) - full).abs().max() <= 1e-5


def test_bridge_and_nnsight_give_our_numbers(arch):
    s = arch.subject
    with torch.no_grad():
        assert (s.bridge(arch.ids).float() - s.logits(arch.ids)).abs().max() <= 1e-5
    for spec in (ZeroHead([(1, 1)]), ZeroQuery([(1, 2)])):
        with apply(s, spec):
            want = s.logits(arch.ids)
        with s.nn.trace(arch.ids):
            nnsight_edit(s, spec)
            out = s.nn.output.save()
        assert (out.logits.float() - want).abs().max() <= 1e-5
        with tl_apply(s, spec) as bridge, torch.no_grad():
            assert (bridge(arch.ids).float() - want).abs().max() <= 1e-5


def test_a_model_without_the_attention_interface_gets_the_clear_error(tmp_path):
    model = T.GPTJForCausalLM(gptj_config())
    folder = save(model, tmp_path / "gptj")
    for attempt in (lambda: wb.load(folder, device="cpu"), lambda: from_model(model, tiny_tokenizer(VOCAB))):
        with pytest.raises(UnsupportedModelError) as err:
            attempt()
        message = str(err.value)
        assert "GPTJForCausalLM" in message and "AttentionInterface" in message
        assert "GPT-2" in message and "GPT-NeoX" in message and "Gemma 2" in message


def test_a_layer_that_skips_the_hook_point_is_found_at_load():
    model = tiny_llama(seed=0).model
    model.model.layers[1].self_attn.layer_idx = None  # its attention calls no longer identify a layer
    with pytest.raises(UnsupportedModelError, match=r"layers \[1\] never reached"):
        from_model(model, tiny_tokenizer(VOCAB))
