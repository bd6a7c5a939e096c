"""capture_stats through the attention hook point: one forward gives the model's normal logits and statistics
equal to those computed from exact captured patterns (tiny random models: GQA, sliding window, right padding).

Both backends: the reference, and the Triton kernel (CPU interpreter without a GPU, see conftest.py). The
repeated-token scores from streamed statistics are compared with the exact path in tests/test_scan.py.
"""

from __future__ import annotations

import random

import pytest
import torch

from tests.conftest import tiny_gemma3, tiny_llama
from workbench.errors import InputError
from workbench.interventions import KnockOutKeys, apply
from workbench.kernels import AttentionStatsRequest, log_lag_edges
from workbench.patterns import capture, capture_stats

pytest.importorskip("triton")
pytestmark = pytest.mark.filterwarnings("ignore:.*encountered in:RuntimeWarning")  # interpreter: log2(0)


def stats_from_patterns(a: torch.Tensor, req: AttentionStatsRequest) -> dict[str, torch.Tensor]:
    """Each statistic by its definition from exact patterns a (B, H, N, N) (float64)."""
    b, h, n, _ = a.shape
    lag = torch.arange(n)[:, None] - torch.arange(n)[None, :]
    edges = req.lag_bins.tolist()
    tgt = req.targets[:, None, :, None] + torch.tensor(req.target_lags)  # (B, 1, N, L)
    ok = (req.targets[:, None, :, None] >= 0) & (tgt >= 0) & (tgt <= torch.arange(n)[:, None])
    tp = a.gather(-1, tgt.clamp(0, n - 1).expand(b, h, n, -1))
    order = torch.sort(a, dim=-1, descending=True, stable=True)
    return {
        "entropy": -torch.xlogy(a, a).sum(-1),
        "first_k_mass": a[..., :req.first_k].sum(-1),
        "span_mass": torch.stack([torch.stack([a[i, ..., s0:s1].sum(-1) for s0, s1 in req.spans[i].tolist()], -1)
                                  for i in range(b)]),
        "lag_mass": torch.stack([(a * ((lag >= lo) & (lag < hi))).sum(-1) for lo, hi in zip(edges, edges[1:])], -1),
        "target_prob": torch.where(ok & (tp > 0), tp, torch.nan),  # 0: masked or outside the window -> NaN
        "topk_prob": order.values[..., :req.topk],
        "rows": a[:, :, req.rows],
    }


@pytest.mark.parametrize("backend", ["reference", "triton"])
@pytest.mark.parametrize("make", [lambda: tiny_llama(seed=3, n_heads=6, n_kv=2),      # GQA 3
                                  lambda: tiny_gemma3(seed=3, window=5)],           # GQA 3, sliding layers
                         ids=["llama", "gemma3-window"])
def test_capture_stats_equals_statistics_of_exact_patterns(make, backend):
    subject = make()
    seed = random.SystemRandom().randrange(2**31)
    g = torch.Generator().manual_seed(seed)
    lengths = (19, 12)  # right padding in the second row
    texts = [" ".join(f"w{int(t)}" for t in torch.randint(0, 90, (n,), generator=g)) for n in lengths]
    batch = subject.tokenize(texts)
    b, n = batch["input_ids"].shape
    spans = torch.tensor([[[1, 4], [6, 7]], [[0, 2], [3, 9]]])
    req = AttentionStatsRequest(entropy=True, first_k=3, spans=spans, lag_bins=log_lag_edges(n),
                                targets=torch.randint(-1, n, (b, n), generator=g), target_lags=(-1, 0, 2), topk=2,
                                rows=torch.tensor([0, 7, n - 1]))
    got = capture_stats(subject, batch, req, backend=backend, logits=True)
    exact = capture(subject, batch, logits=True)
    real = batch["attention_mask"].bool()  # statistics of real queries; padding queries are not compared
    torch.testing.assert_close(got.logits, exact.logits, rtol=1e-5, atol=1e-5)  # same forward output
    assert sorted(got.stats) == list(range(subject.n_layers))
    for layer in range(subject.n_layers):
        want = stats_from_patterns(exact.patterns[layer].double(), req)
        st = got.stats[layer]
        for name, w in want.items():
            a = st[name].double()
            if name == "rows":
                sel = real[:, req.rows][:, None, :, None].expand_as(w)
                a, w = a[sel], w[sel]
            else:
                sel = real[:, None, :].reshape(b, 1, n, *([1] * (w.dim() - 3))).expand_as(w)
                a, w = a[sel], w[sel]
            assert torch.equal(a.isnan(), w.isnan()), f"L{layer} {name}: NaN pattern; seed={seed}"
            fin = ~w.isnan()
            torch.testing.assert_close(a[fin], w[fin], rtol=1e-4, atol=1e-5,
                                       msg=lambda m: f"L{layer} {name} seed={seed}: {m}")
        # target_logit is the scaled score: log(target_prob) + the row's log-sum-exp
        logit = st["target_prob"].double().log() + st["lse"].double()[..., None]
        fin = st["target_logit"].isfinite() & real[:, None, :, None]
        torch.testing.assert_close(st["target_logit"].double()[fin], logit[fin], rtol=1e-4, atol=1e-4)
        top = exact.patterns[layer].argmax(-1)  # top-1 key; ties are measure-zero with random weights
        assert torch.equal(st["topk_index"][..., 0][real[:, None].expand_as(top)], top[real[:, None].expand_as(top)])


def test_capture_stats_reduces_per_head_and_refuses_what_it_cannot_see():
    subject = tiny_llama(seed=4)
    ids = torch.randint(4, 90, (2, 16), generator=torch.Generator().manual_seed(0))
    per_query = capture_stats(subject, ids, AttentionStatsRequest(entropy=True, first_k=1), layers=[1])
    mean = capture_stats(subject, ids, AttentionStatsRequest(entropy=True, first_k=1, reduce="mean"), layers=[1])
    assert list(mean.stats) == [1] and mean.stats[1]["entropy"].shape == (2, subject.n_heads)
    torch.testing.assert_close(mean.stats[1]["entropy"], per_query.stats[1]["entropy"].mean(-1))
    assert per_query.logits is None and mean.stacked("first_k_mass").shape == (1, 2, subject.n_heads)
    with apply(subject, KnockOutKeys(keys=(0,), heads=[(1, 0)])):
        with pytest.raises(InputError, match="edits layer 1's attention scores"):
            capture_stats(subject, ids, AttentionStatsRequest(entropy=True), layers=[1])
