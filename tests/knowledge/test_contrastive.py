"""DeCoRe contrastive decoding against a slow, cache-free reference on a tiny random model."""

import pytest
import torch

from workbench.errors import InputError
from workbench.knowledge.contrastive import contrastive_generate, contrastive_scores, entropy_alpha
from workbench.models.attention import AttentionHook, hooks_active

HEADS = [(0, 1), (1, 2)]
PROMPT = torch.tensor([1, 17, 40, 9, 63, 22, 5])


class _MaskFrom(AttentionHook):
    """Reference masking: zero the heads' queries at absolute positions >= start (the decoded tokens)."""

    def __init__(self, heads, start):
        self.heads, self.start = heads, start

    def edit_query(self, call, query):
        query = query.clone()
        first = call.n_keys - call.n_queries
        for layer, head in self.heads:
            if layer == call.layer:
                query[:, head, max(0, self.start - first):] = 0
        return query


def _reference(subject, alpha, steps):
    """Greedy decoding with full forwards, no cache: plain logits, masked logits, DeCoRe formula on logits."""
    ids, out = PROMPT[None].clone(), []
    special = set(subject.tokenizer.all_special_ids)
    for _ in range(steps):
        with torch.no_grad():
            base = subject.model(input_ids=ids).logits[0, -1].double()
            with hooks_active(_MaskFrom(HEADS, len(PROMPT) - 1)):
                masked = subject.model(input_ids=ids).logits[0, -1].double()
        a = alpha if alpha != "entropy" else float(-(base.softmax(-1) * base.log_softmax(-1)).sum())
        token = int(((1 + a) * base - a * masked).argmax())
        out.append(token)
        if token in special:
            break
        ids = torch.cat([ids, torch.tensor([[token]])], 1)
    return out


def test_scores_are_the_decore_formula_up_to_a_constant():
    gen = torch.Generator().manual_seed(0)
    base, masked = torch.randn(3, 50, generator=gen), torch.randn(3, 50, generator=gen)
    for alpha in (0.0, 0.5, 2.0):
        got = contrastive_scores(base, masked, alpha).double()
        want = (1 + alpha) * base.double() - alpha * masked.double()
        shift = (got - want)[:, :1]
        torch.testing.assert_close(got, want + shift, atol=1e-5, rtol=0)
        assert (got.argmax(-1) == want.argmax(-1)).all()
    alphas = torch.tensor([0.0, 1.0, 3.0])
    got = contrastive_scores(base, masked, alphas)
    torch.testing.assert_close(got[2], contrastive_scores(base[2:], masked[2:], 3.0)[0])
    p = base.softmax(-1)
    torch.testing.assert_close(entropy_alpha(base), -(p * p.log()).sum(-1))
    assert entropy_alpha(base, cap=0.1).max() <= 0.1


def test_alpha_zero_is_plain_greedy(llama):
    got = contrastive_generate(llama, PROMPT, HEADS, alpha=0.0, max_new_tokens=8)
    assert got.tokens == _reference(llama, 0.0, 8)
    assert got.alphas == [0.0] * len(got.tokens)


@pytest.mark.parametrize("alpha", [1.0, 100.0, "entropy"])  # the tiny model's masking moves logits by ~1e-3
def test_matches_cache_free_reference(llama, alpha):
    got = contrastive_generate(llama, PROMPT, HEADS, alpha=alpha, max_new_tokens=8)
    assert got.tokens == _reference(llama, alpha, 8)


def test_contrast_changes_the_continuation(llama):
    plain = contrastive_generate(llama, PROMPT, HEADS, alpha=0.0, max_new_tokens=8).tokens
    assert any(contrastive_generate(llama, PROMPT, HEADS, alpha=a, max_new_tokens=8).tokens != plain for a in (100.0, 1000.0))


def test_bad_input(llama):
    with pytest.raises(InputError, match="alpha"):
        contrastive_generate(llama, PROMPT, HEADS, alpha="big")
    with pytest.raises(InputError, match="at least one head"):
        contrastive_generate(llama, PROMPT, [], alpha=1.0)
    with pytest.raises(InputError):
        contrastive_generate(llama, PROMPT, [(9, 0)], alpha=1.0)
