"""Interventions through the one attention hook, checked against independent manual edits."""

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr

from workbench.errors import InputError
from workbench.interventions import (AddToHead, KnockOutKeys, ReplaceHead, ScaleHead, ScaleKeys, ZeroHead, ZeroQuery,
                                     ZeroValue, activation_patching, apply, attribution_patching, head_z, mean_values,
                                     nnsight_edit, path_patching, tl_apply)
from workbench.patterns import capture
from tests.conftest import tiny_gemma3, tiny_llama


def logits_with_module_hook(subject, ids, module, hook, pre=False):
    handle = (module.register_forward_pre_hook(hook) if pre else module.register_forward_hook(hook))
    try:
        return subject.logits(ids)
    finally:
        handle.remove()


@pytest.mark.parametrize("make", [tiny_llama, tiny_gemma3])
def test_ablating_nothing_changes_nothing(make):
    subject = make(seed=2)
    ids = torch.randint(4, subject.vocab_size, (2, 15))
    base = subject.logits(ids)
    with apply(subject):
        assert torch.equal(subject.logits(ids), base)
    with apply(subject, ZeroHead([]), ScaleHead([(0, 1)], factor=1.0), ScaleKeys([(1, 0)], keys=(0,), factor=1.0)):
        assert torch.allclose(subject.logits(ids), base, atol=1e-5)


@pytest.mark.parametrize("make", [tiny_llama, tiny_gemma3])
def test_zero_head_equals_zeroing_its_slice_of_o_proj_input(make):
    subject = make(seed=4)
    ids = torch.randint(4, subject.vocab_size, (2, 11))
    layer, head, d = 1, 2, subject.d_head

    def zero_slice(module, args):
        x = args[0].clone()
        x[..., head * d:(head + 1) * d] = 0
        return (x,)

    want = logits_with_module_hook(subject, ids, subject.attention_module(layer).o_proj, zero_slice, pre=True)
    with apply(subject, ZeroHead([(layer, head)])):
        got = subject.logits(ids)
    assert torch.allclose(got, want, atol=1e-5)
    assert (got - subject.logits(ids)).abs().max() > 1e-4  # and it did change something


def test_zero_value_group_equals_zeroing_the_kv_head():
    subject = tiny_llama(seed=6, n_heads=4, n_kv=2)
    ids = torch.randint(4, subject.vocab_size, (1, 13))
    d = subject.d_head

    def zero_kv1(module, args, out):
        out = out.clone()
        out[..., 1 * d:2 * d] = 0  # KV head 1 serves query heads 2 and 3
        return out

    want = logits_with_module_hook(subject, ids, subject.attention_module(0).v_proj, zero_kv1)
    with apply(subject, ZeroValue([(0, 3)], group=True)):
        got = subject.logits(ids)
    assert torch.allclose(got, want, atol=1e-5)
    with apply(subject, ZeroHead([(0, 2), (0, 3)])):
        assert torch.allclose(subject.logits(ids), want, atol=1e-5)


def test_zero_query_gives_uniform_attention_on_that_head_only(llama):
    ids = torch.randint(4, llama.vocab_size, (1, 9))
    before = capture(llama, ids)
    with apply(llama, ZeroQuery([(1, 1)])):
        after = capture(llama, ids)
    uniform = torch.tril(torch.ones(9, 9)) / torch.arange(1, 10)[:, None]
    assert torch.allclose(after.pattern(1, 1)[0], uniform, atol=1e-6)
    assert torch.allclose(after.pattern(1, 0), before.pattern(1, 0), atol=1e-6)  # same KV group, untouched
    assert torch.allclose(after.pattern(0, 1), before.pattern(0, 1), atol=1e-6)  # earlier layer untouched


def test_knockout_and_scale_keys_renormalise(llama):
    ids = torch.randint(4, llama.vocab_size, (1, 10))
    base = capture(llama, ids).pattern(0, 3)[0]
    with apply(llama, KnockOutKeys([(0, 3)], keys=(0, 4))):
        ko = capture(llama, ids).pattern(0, 3)[0]
    want = base.clone()
    want[:, [0, 4]] = 0
    want[1:] = want[1:] / want[1:].sum(-1, keepdim=True)  # row 0 sees only key 0: nothing left
    assert torch.allclose(ko[1:], want[1:], atol=1e-5)
    beta = 0.4
    with apply(llama, ScaleKeys([(0, 3)], keys=(0,), factor=beta)) as hook:
        sc = capture(llama, ids, extra_hooks=[hook]).pattern(0, 3)[0]  # already active: applied once
    p0 = base[:, 0]
    assert torch.allclose(sc[:, 0], beta * p0 / (1 - p0 + beta * p0), atol=1e-5)


def test_replace_head_patches_and_mean_ablates(llama):
    clean = torch.randint(4, llama.vocab_size, (2, 12))
    corrupt = torch.randint(4, llama.vocab_size, (2, 12))
    clean_cap = capture(llama, clean, z=True, patterns=False, logits=True)
    # patching a head's own values back in changes nothing
    with apply(llama, ReplaceHead([(1, 0)], values={(1, 0): clean_cap.z[1][:, :, 0]})):
        assert torch.allclose(llama.logits(clean), clean_cap.logits, atol=1e-5)
    # patching clean -> corrupt at one head equals writing the clean slice into o_proj's input by hand
    d = llama.d_head

    def write_clean(module, args):
        x = args[0].clone()
        x[..., 2 * d:3 * d] = clean_cap.z[1][:, :, 2].reshape(2, 12, d)
        return (x,)

    want = logits_with_module_hook(llama, corrupt, llama.attention_module(1).o_proj, write_clean, pre=True)
    with apply(llama, ReplaceHead([(1, 2)], values={(1, 2): clean_cap.z[1][:, :, 2]})):
        assert torch.allclose(llama.logits(corrupt), want, atol=1e-5)
    # mean ablation sets the head's output to the reference mean at the chosen positions only
    means = mean_values(clean_cap.z, [(0, 1)])
    with apply(llama, ReplaceHead([(0, 1)], values=means, positions=(3, 4))):
        got = capture(llama, corrupt, z=True, patterns=False).z[0][:, :, 1]
    assert torch.allclose(got[:, 3:5], means[(0, 1)].expand(2, 2, -1), atol=1e-6)
    plain = capture(llama, corrupt, z=True, patterns=False).z[0][:, :, 1]
    assert torch.allclose(got[:, :3], plain[:, :3], atol=1e-6)


def test_interventions_apply_during_generation(llama):
    prompt = "w5 w6 w7 w8"
    base = llama.generate(prompt, max_new_tokens=5)
    heads = [(layer, h) for layer in range(2) for h in range(4)]
    with apply(llama, ZeroHead(heads)):
        ablated = llama.generate(prompt, max_new_tokens=5)
        no_cache = llama.logits(llama.tokenize(prompt)["input_ids"])
    first = llama.tokenizer.decode([int(no_cache[0, -1].argmax())]).strip()
    assert ablated.split()[0] == first  # the cached generation saw the same intervention
    assert isinstance(base, str)


def test_bad_specs(llama):
    with pytest.raises(InputError, match="out of range"):
        with apply(llama, ZeroHead([(5, 0)])):
            pass
    with pytest.raises(InputError, match="no values"):
        with apply(llama, ReplaceHead([(0, 0)], values={})):
            pass


# ------------------------------------------------------------------ rows=: one intervention per batch row
def test_rows_restrict_a_spec_to_those_batch_rows(llama):
    ids = torch.randint(4, llama.vocab_size, (3, 10))
    base = llama.logits(ids)
    with apply(llama, ZeroHead([(1, 2)])):
        ablated = llama.logits(ids)
    with apply(llama, ZeroHead([(1, 2)], rows=(0, 2)), ScaleKeys([(0, 1)], keys=(0,), factor=0.3, rows=(1,))):
        mixed = llama.logits(ids)
    with apply(llama, ScaleKeys([(0, 1)], keys=(0,), factor=0.3)):
        scaled = llama.logits(ids)
    assert torch.allclose(mixed[[0, 2]], ablated[[0, 2]], atol=1e-5)
    assert torch.allclose(mixed[1], scaled[1], atol=1e-5)
    assert (mixed[1] - base[1]).abs().max() > 1e-4
    clean = capture(llama, ids, z=True, patterns=False).z[1][:, :, 3]
    with apply(llama, ReplaceHead([(1, 3)], values={(1, 3): clean[[2, 0]]}, rows=(0, 2))):
        swapped = capture(llama, ids, z=True, patterns=False).z[1][:, :, 3]
    assert torch.allclose(swapped[0], clean[2], atol=1e-6) and torch.allclose(swapped[2], clean[0], atol=1e-6)
    assert torch.allclose(swapped[1], clean[1], atol=1e-6)
    with pytest.raises(InputError, match="batch rows"):
        with apply(llama, ZeroHead([(0, 0)], rows=(5,))):
            llama.logits(ids)


def test_add_to_head_adds_scaled_values(llama):
    ids = torch.randint(4, llama.vocab_size, (2, 8))
    z = capture(llama, ids, z=True, patterns=False).z[1][:, :, 0]
    with apply(llama, AddToHead([(1, 0)], values={(1, 0): z}, factor=2.0)):
        tripled = llama.logits(ids)
    with apply(llama, ScaleHead([(1, 0)], factor=3.0)):
        assert torch.allclose(llama.logits(ids), tripled, atol=1e-5)


# ----------------------------------------------------- the same specs through TransformerLens and nnsight
FRONTEND_SPECS = [
    [ZeroHead([(1, 2)], rows=(0, 2))],
    [ScaleHead([(0, 1)], factor=0.3), ZeroQuery([(1, 0)], rows=(1,))],
    [ZeroValue([(0, 3)], group=True)],
    [ReplaceHead([(1, 1)], values={(1, 1): torch.linspace(-1, 1, 8)}, positions=(2, 5))],
    [KnockOutKeys([(1, 1)], keys=(0, 3)), ScaleKeys([(0, 2)], keys=(0,), factor=0.2, rows=(1,))],
]


@pytest.mark.parametrize("make", [tiny_llama, tiny_gemma3])
def test_transformerlens_and_nnsight_give_the_hook_numbers(make):
    subject = make(seed=3)
    ids = torch.randint(4, subject.vocab_size, (3, 10))
    base = subject.logits(ids)
    with tl_apply(subject) as bridge:
        assert torch.allclose(bridge(ids).float(), base, atol=1e-5)
    for specs in FRONTEND_SPECS:
        if make is tiny_gemma3:  # 3 heads of 1 KV group each
            specs = [type(s)(tuple((l, h % 3) for l, h in s.heads), **{k: getattr(s, k) for k in s.__dataclass_fields__
                                                                      if k != "heads"}) for s in specs]
            for s in specs:
                if isinstance(s, ReplaceHead):
                    s.values.update({(1, 1): torch.linspace(-1, 1, subject.d_head)})
        with apply(subject, *specs):
            want = subject.logits(ids)
        assert (want - base).abs().max() > 1e-4  # the specs do something
        with torch.no_grad(), tl_apply(subject, *specs) as bridge:
            assert torch.allclose(bridge(ids).float(), want, atol=1e-5), specs
        if any(isinstance(s, (KnockOutKeys, ScaleKeys)) for s in specs):
            with pytest.raises(InputError, match="apply"):
                with subject.nn.trace(ids):
                    nnsight_edit(subject, *specs)
            continue
        with torch.no_grad(), subject.nn.trace(ids):
            nnsight_edit(subject, *specs)
            out = subject.nn.output.save()
        assert torch.allclose(out.logits.float(), want, atol=1e-5), specs


# --------------------------------------------------------------------- activation / path / attribution patching
def _pair_and_metric(subject, seed=0, batch=4, n=12):
    g = torch.Generator().manual_seed(seed)
    source = torch.randint(4, subject.vocab_size, (batch, n), generator=g)
    base = source.clone()
    base[:, 3] = torch.randint(4, subject.vocab_size, (batch,), generator=g)
    target = source[:, -1]

    def metric(logits):
        return logits[:, -2].double().log_softmax(-1).gather(-1, target[:, None].to(logits.device))[:, 0]
    return base, source, metric


def test_activation_patching_equals_hand_written_o_proj_edit(llama):
    base, source, metric = _pair_and_metric(llama)
    effects = activation_patching(llama, base, source, metric, heads=[(1, 2)])
    z = capture(llama, source, z=True, patterns=False).z[1][:, :, 2]
    d = llama.d_head

    def write(module, args):
        x = args[0].clone()
        x[..., 2 * d:3 * d] = z.reshape(*x.shape[:2], d)
        return (x,)

    want = metric(logits_with_module_hook(llama, base, llama.attention_module(1).o_proj, write, pre=True))
    assert effects[1, 2] == pytest.approx(float((want - metric(llama.logits(base))).mean()), abs=1e-6)
    assert np.isnan(effects[0, 0])


def test_path_patching_matches_a_hand_written_two_run_reference():
    subject = tiny_llama(seed=8, n_layers=3)
    base, source, metric = _pair_and_metric(subject, seed=1)
    d = subject.d_head
    z_src = capture(subject, source, z=True, patterns=False).z
    z_base = capture(subject, base, z=True, patterns=False).z
    recorded = {}

    def run1(layer):
        def hook(module, args):
            x = args[0].clone()
            if layer == 0:
                x[..., 1 * d:2 * d] = z_src[0][:, :, 1].reshape(*x.shape[:2], d)
            else:
                recorded[layer] = x[..., 0:d].clone()
                x = z_base[layer].reshape(x.shape)
            return (x,)
        return hook

    handles = [subject.attention_module(l).o_proj.register_forward_pre_hook(run1(l)) for l in range(3)]
    try:
        logits1 = subject.logits(base)
    finally:
        for h in handles:
            h.remove()

    def run2(module, args):
        x = args[0].clone()
        x[..., 0:d] = recorded[2]
        return (x,)

    ref = metric(subject.logits(base))
    want_receiver = metric(logits_with_module_hook(subject, base, subject.attention_module(2).o_proj, run2, pre=True)) - ref
    got = path_patching(subject, base, source, (0, 1), metric, receivers=[(2, 0)])
    assert torch.allclose(got, want_receiver, atol=1e-6) and want_receiver.abs().max() > 1e-5
    got_logits = path_patching(subject, base, source, (0, 1), metric)
    assert torch.allclose(got_logits, metric(logits1) - ref, atol=1e-6)
    # a last-layer sender reaches the logits only directly: path patching = activation patching
    last = path_patching(subject, base, source, (2, 3), metric).mean()
    assert float(last) == pytest.approx(activation_patching(subject, base, source, metric, heads=[(2, 3)])[2, 3], abs=1e-6)
    with pytest.raises(InputError, match="later layers"):
        path_patching(subject, base, source, (1, 0), metric, receivers=[(1, 2)])


@pytest.mark.parametrize("make", [tiny_llama, tiny_gemma3])
def test_attribution_patching_is_the_first_order_term_of_real_patching(make):
    """Each head's estimate equals the finite-difference slope of patching along z_base -> z_source."""
    subject = make(seed=5)
    subject.model.double()
    base, source, metric = _pair_and_metric(subject)
    est = attribution_patching(subject, base, source, metric)
    z_src = head_z(subject, source)
    z_base = head_z(subject, base)
    eps = 1e-2  # the attention math runs in float32 even for a float64 model: smaller steps drown in rounding
    for layer in range(subject.n_layers):
        for head in range(subject.n_heads):
            diff = {(layer, head): (z_src[layer][:, :, head] - z_base[layer][:, :, head]).double()}
            ends = []
            for sign in (1, -1):  # central difference: the second-order term cancels
                with torch.no_grad(), apply(subject, AddToHead([(layer, head)], values=diff, factor=sign * eps)):
                    ends.append(metric(subject.model(base).logits).mean())
            slope = float(ends[0] - ends[1]) / (2 * eps)
            assert est[layer, head] == pytest.approx(slope, rel=1e-2, abs=2e-5)


def test_attribution_patching_ranks_heads_like_real_patching(llama):
    base, source, metric = _pair_and_metric(llama, seed=3)
    real = activation_patching(llama, base, source, metric)
    est = attribution_patching(llama, base, source, metric)
    assert spearmanr(real.ravel(), est.ravel()).statistic > 0.9
