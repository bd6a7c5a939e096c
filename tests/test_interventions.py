"""Interventions through the one attention hook, checked against independent manual edits."""

import pytest
import torch

from workbench.errors import InputError
from workbench.interventions import (KnockOutKeys, ReplaceHead, ScaleHead, ScaleKeys, ZeroHead, ZeroQuery,
                                     ZeroValue, apply, mean_values)
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
