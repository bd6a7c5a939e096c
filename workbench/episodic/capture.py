"""Capture for list stimuli: every head's score and attention from each test item to the study items, and the outputs.

For a test item whose token is study item ``s`` (first occurrence at ``study_pos[s]``), lag ``k`` is the study
item ``s + k``: ``scores`` holds the scaled pre-softmax score to that key (Ji-An et al. 2024's "CRP of
attention"), ``attn`` the post-softmax attention (Mistry et al. 2025), NaN where ``s + k`` is outside the study
list or the key is not visible (sliding window). ``study_attn`` holds the attention to every study item (0 where
not visible; serial-position curves, Kahana CRPs), and
``recall_prob`` the model's next-token probability of every study item's token at each test item (in-context
serial recall, Mistry et al. 2025). Lags are counted in list items, so keys outside the study list (BOS, the
test list) never enter a lag curve; for lists on consecutive positions item lags are token lags.

Two paths, one result: ``exact`` computes the chosen score rows from the post-RoPE queries and keys in the hook
point's ``on_qk`` (float32, rows of test items only); ``streamed`` asks the attention-statistics kernels for
``target_logit``/``target_prob`` (targets = first occurrences, ``target_lags``) and per-item span masses, never
forming an N x N matrix (long contexts; consecutive study lists only). ``auto`` runs ``exact`` in the largest
batch steps whose predicted peak (``predict_list_capture``) fits the memory budget, and ``streamed`` when not even
one row would fit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

from ..errors import InputError
from ..models.attention import AttentionCall, AttentionHook, hooks_active
from ..patterns.capture import memory_plan, too_big
from ..patterns.memory import FLOAT32, Budget, ModelDims, Prediction, forward_peak, largest_step, steady_allocator
from ..patterns.stats import predict_stats
from ..progress import progress
from ..stimuli.lists import RecallLists
from .lag_crp import LagCurve, aggregate_lag_curves, conditional_response_probability, serial_position_curve

LAGS = tuple(range(-8, 8))  # Ji-An et al. 2024: pre-softmax scores at lags -8..7
METHODS = ("auto", "exact", "streamed")


def item_keys(lists: RecallLists, lags) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, n_test, n_lags) key position of study item ``test_item + lag`` (-1 where none) and that item index."""
    item = lists.test_item[..., None] + torch.as_tensor(lags)
    ok = (lists.test_item[..., None] >= 0) & (item >= 0) & (item < lists.n_items)
    pos = lists.study_pos[:, None, :].expand(-1, item.shape[1], -1).gather(2, item.clamp(0, lists.n_items - 1))
    return torch.where(ok, pos, -1), torch.where(ok, item, -1)


class PairScoreRecorder(AttentionHook):
    """Records, per layer and query head, scaled scores and attention of chosen (query, key) pairs via ``on_qk``.

    ``queries`` (B, Q) positions; ``keys`` {name: (B, Q, K) positions, -1 = none}. Scores are the float32 scaled
    (and soft-capped) q·k, NaN where the key is -1 or not visible; attention is exp(score - logsumexp of the
    query's visible row), 0 where not visible, NaN where the key is -1. Score edits by other hooks
    (``edit_scores``) are not reflected; query edits are.
    """

    def __init__(self, layers, queries: torch.Tensor, keys: dict[str, torch.Tensor]):
        self.layers = frozenset(int(l) for l in layers)
        self.queries = queries.long()
        self.keys = {name: k.long() for name, k in keys.items()}
        self.scores: dict[int, dict[str, torch.Tensor]] = {}
        self.attn: dict[int, dict[str, torch.Tensor]] = {}

    def on_qk(self, call: AttentionCall, query: torch.Tensor, key: torch.Tensor) -> None:
        if call.n_queries != call.n_keys:
            raise InputError("pair scores need a full forward pass (use_cache=False), not cached decoding")
        b, h, _, d = query.shape
        dev = query.device
        qi = self.queries.to(dev)
        n_q = qi.shape[1]
        rows = query.gather(2, qi[:, None, :, None].expand(b, h, n_q, d)).float()
        k = key.float().repeat_interleave(call.group, dim=1) if call.group > 1 else key.float()
        s = torch.matmul(rows, k.transpose(-1, -2)) * call.scaling  # (B, H, Q, Nk)
        if call.softcap is not None:
            s = torch.tanh(s / call.softcap) * call.softcap
        vis = call.visibility(dev).expand(b, 1, -1, -1)
        vis = vis.gather(2, qi[:, None, :, None].expand(b, 1, n_q, vis.shape[-1]))
        s = s.masked_fill(~vis, -math.inf)
        lse = torch.logsumexp(s, dim=-1, keepdim=True)
        self.scores[call.layer], self.attn[call.layer] = {}, {}
        for name, keys in self.keys.items():
            kk = keys.to(dev)
            picked = s.gather(3, kk.clamp(min=0)[:, None].expand(b, h, n_q, kk.shape[-1]))
            given = (kk >= 0)[:, None]
            nan = torch.full_like(picked, math.nan)
            self.scores[call.layer][name] = torch.where(given & torch.isfinite(picked), picked, nan).cpu()
            self.attn[call.layer][name] = torch.where(given, torch.exp(picked - lse), nan).cpu()


@dataclass
class ListCapture:
    """Per-head scores/attention of test items to study items: arrays [seq, layer, head, test item, lag or item]."""

    lags: np.ndarray
    layers: list[int]
    scores: np.ndarray  # (B, L, H, Q, n_lags) pre-softmax, NaN off the study list
    attn: np.ndarray  # (B, L, H, Q, n_lags) post-softmax
    study_attn: np.ndarray  # (B, L, H, Q, n_items) post-softmax attention to each study item
    recall_prob: np.ndarray  # (B, Q, n_items) next-token probability of each study item's token
    test_item: np.ndarray  # (B, Q)
    method: str
    settings: dict = field(default_factory=dict)

    def lag_curve(self, kind: str = "scores", n_boot: int = 1000, seed: int = 0) -> LagCurve:
        """Per-head mean over test items of ``scores`` or ``attn`` by lag, bootstrap CI over sequences (Ji-An et al. 2024)."""
        if kind not in ("scores", "attn"):
            raise InputError(f"kind must be 'scores' (pre-softmax) or 'attn' (post-softmax), got {kind!r}")
        return aggregate_lag_curves(getattr(self, kind), self.lags, n_boot=n_boot, seed=seed)

    def crp(self, max_lag: int = 8, exclude_tested: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """Kahana lag-CRP of attention per head: (lags, crp[L, H, lag]) (available-vs-chosen normalisation); lags beyond the list length are dropped.

        ``exclude_tested``: as in free recall, where an item already recalled is no longer available (Kahana
        1996), study items already presented in the test list (the current one included) count neither as
        opportunities nor as chosen mass. Default False: every study item is available to every query.
        """
        n_items = self.study_attn.shape[-1]
        available = None
        if exclude_tested:
            onehot = (self.test_item[..., None] == np.arange(n_items)) & (self.test_item[..., None] >= 0)
            available = ~(np.cumsum(onehot, axis=1) > 0)
        return conditional_response_probability(self.study_attn, self.test_item, max_lag=min(max_lag, n_items - 1),
                                                available=available)

    def serial_position(self) -> tuple[np.ndarray, np.ndarray]:
        """Mean attention to each study item over test items and sequences, per head: (mean, sem) [L, H, n_items]."""
        keep = self.test_item >= 0
        attn = np.where(keep[:, None, None, :, None], self.study_attn, np.nan)
        return serial_position_curve(attn)

    def recall_values(self) -> np.ndarray:
        """Output serial recall: [seq, test item, lag] next-token probability of study item test_item + lag (NaN off the list)."""
        item = self.test_item[..., None] + self.lags
        ok = (self.test_item[..., None] >= 0) & (item >= 0) & (item < self.recall_prob.shape[-1])
        picked = np.take_along_axis(self.recall_prob, np.clip(item, 0, self.recall_prob.shape[-1] - 1), axis=-1)
        return np.where(ok, picked, np.nan)

    def recall_curve(self, n_boot: int = 1000, seed: int = 0) -> LagCurve:
        """Next-token probability of the study item at each lag from the current test item (+1 = serial recall), CI over sequences."""
        return aggregate_lag_curves(self.recall_values(), self.lags, n_boot=n_boot, seed=seed)


@torch.no_grad()
def candidate_logprobs(subject, ids: torch.Tensor, at: torch.Tensor, candidates: torch.Tensor, hooks=()) -> torch.Tensor:
    """(B, Q, C) log p(candidates[b, q, c] | ids[b, :at[b, q] + 1]) from one forward pass under ``hooks``; logits only at the asked positions."""
    keep = torch.unique(at.flatten())
    with hooks_active(*hooks):
        out = subject.model(input_ids=ids.to(subject.device), use_cache=False, logits_to_keep=keep.to(subject.device))
    logp = torch.log_softmax(out.logits.float(), dim=-1).cpu()  # (B, len(keep), V)
    rows = logp.gather(1, torch.searchsorted(keep, at.contiguous())[..., None].expand(-1, -1, logp.shape[-1]))
    return rows.gather(2, candidates)


def _forward(subject, ids: torch.Tensor, test_pos: torch.Tensor, study_ids: torch.Tensor, hooks) -> torch.Tensor:
    """Next-token probabilities (B, Q, n_items) of the study tokens at the test positions, under ``hooks``."""
    return candidate_logprobs(subject, ids, test_pos, study_ids[:, None, :].expand(-1, test_pos.shape[1], -1),
                              hooks).exp()


def stats_request(lists: RecallLists, rows: slice, lags):
    """The attention-statistics request of the streamed path for a slice of the lists: target_logit/target_prob at
    first occurrence + lag, and the mass on each study item."""
    from ..kernels import AttentionStatsRequest

    ids, test_pos = lists.input_ids[rows], lists.test_pos[rows]
    targets = torch.full(ids.shape, -1, dtype=torch.long)
    targets.scatter_(1, test_pos, lists.first_pos[rows])
    study = lists.study_pos[rows]
    return AttentionStatsRequest(targets=targets, target_lags=tuple(int(x) for x in lags),
                                 spans=torch.stack([study, study + 1], dim=-1))


def predict_list_capture(dims: ModelDims, lists: RecallLists, lags, method: str, step: int | None = None, *,
                         n_layers: int | None = None, device_type: str = "cpu") -> Prediction:
    """Peak memory of ``capture_lists`` with ``method`` ("exact" or "streamed") in batch steps of ``step`` rows.

    Per step: the model's activations; the logits at the distinct test positions (B x kept positions x vocab),
    their log-softmax and the rows gathered at each test item; exact: one layer's float32 score rows
    (B x H x test items x N, twice while masked) and the selected queries and keys; streamed: the kernels'
    working memory (``predict_stats``). Kept: every layer's lag / study-item results of the whole batch.
    """
    step = min(step or lists.batch, lists.batch)
    n, q = lists.input_ids.shape[1], lists.test_pos.shape[1]
    n_layers = dims.n_layers if n_layers is None else n_layers
    n_keep = max(len(torch.unique(lists.test_pos[lo:lo + step])) for lo in range(0, lists.batch, step))
    kept = 2 * n_layers * lists.batch * dims.n_heads * q * (2 * len(lags) + lists.n_items) * FLOAT32  # + the joins
    if method == "streamed":
        return predict_stats(dims, stats_request(lists, slice(0, step), lags), step, n, n_layers=n_layers,
                             step=step, device_type=device_type, extra_kept=kept, n_logits=2 * n_keep + q)
    rows = step * dims.n_heads * q * n * FLOAT32
    extra = 2 * rows + step * dims.n_heads * (q + n) * dims.d_head * FLOAT32 + step * q * n
    # logits at the kept positions, their log-softmax and the rows gathered from it: (2 x kept + test items) x vocab
    return forward_peak(dims, step, n, device_type=device_type, n_logits=2 * n_keep + q, kept=kept, layer_extra=extra)


def plan_lists(subject, lists: RecallLists, lags, method: str, batch_size: int | None, layers,
               budget: Budget | None = None) -> dict:
    """The method and batch step of a list capture: ``exact`` in the largest steps that fit the budget (or
    ``batch_size``), else (``auto``) ``streamed``; the plan records the prediction and why."""
    if method not in METHODS:
        raise InputError(f"method must be one of {METHODS}, got {method!r}")
    if method == "streamed" and not lists.contiguous:
        raise InputError("the streamed path needs study items on consecutive positions (token lag = item lag); "
                         "use method='exact' for lists with separators")
    steady_allocator()
    dims, budget = ModelDims.of(subject), budget or Budget.now(subject.device)

    def predictor(name):
        return lambda step: predict_list_capture(dims, lists, lags, name, step, n_layers=len(layers),
                                                 device_type=subject.device.type)

    tried = {}
    for name in (["exact", "streamed"] if method == "auto" else [method]):
        if name == "streamed" and not lists.contiguous:
            continue
        predict = predictor(name)
        step = batch_size or largest_step(predict, lists.batch, budget)
        tried[name] = predict(max(step, 1))
        if step and budget.allows(predict(step)):
            why = "asked for" if method != "auto" else ("fits" if name == "exact" else
                                                        f"exact would need {tried['exact'].describe()}")
            return memory_plan(name, min(step, lists.batch), lists.batch, predict(step), budget, why)
    name, pred = next(iter(tried.items()))
    raise too_big(f"the {name} list capture of {lists.batch} x {lists.input_ids.shape[1]} tokens", pred, budget,
                  "Use fewer or shorter lists, fewer layers, or a smaller batch_size.")


def capture_lists(subject, lists: RecallLists, *, lags=LAGS, layers=None, method: str = "auto",
                  batch_size: int | None = None, extra_hooks=(), backend: str = "auto") -> ListCapture:
    """Scores and attention of every head from test items to study items by lag, study-item attention and output recall probabilities."""
    if not isinstance(lists, RecallLists):
        raise InputError(f"lists must be a RecallLists (workbench.stimuli.lists), got {type(lists).__name__}")
    lags = np.asarray(lags, dtype=np.int64)
    if lags.ndim != 1 or len(lags) == 0:
        raise InputError(f"lags must be a non-empty list of ints, got {lags!r}")
    layers = list(range(subject.n_layers)) if layers is None else sorted(int(l) for l in layers)
    for layer in layers:
        subject.check_head(layer, 0)
    subject.check_length(lists.input_ids.shape[1])
    plan = plan_lists(subject, lists, lags, method, batch_size, layers)
    method, step = plan["mode"], plan["batch_size"]
    keys, _ = item_keys(lists, lags)
    study_keys = lists.study_pos[:, None, :].expand(-1, lists.test_pos.shape[1], -1)
    masked = lists.test_item < 0
    parts = []
    for lo in progress(range(0, lists.batch, step), desc="list capture", unit="batch", leave=False):
        sl = slice(lo, lo + step)
        ids, test_pos, study_ids = lists.input_ids[sl], lists.test_pos[sl], lists.study_ids[sl]
        if method == "exact":
            rec = PairScoreRecorder(layers, test_pos, {"lag": keys[sl], "study": study_keys[sl]})
            prob = _forward(subject, ids, test_pos, study_ids, [rec, *extra_hooks])
            stack = lambda d, name: torch.stack([d[l][name] for l in layers], dim=1)  # noqa: E731
            score = stack(rec.scores, "lag")  # lag keys that are not visible: NaN, as the kernels' target_prob
            attn = torch.where(torch.isnan(score), math.nan, stack(rec.attn, "lag"))
            parts.append((score, attn, stack(rec.attn, "study"), prob))
        else:
            parts.append(_streamed(subject, lists, sl, lags, layers, keys[sl], extra_hooks, backend))
    scores, attn, study_attn, prob = (torch.cat([p[i] for p in parts]).numpy() for i in range(4))
    study_attn = np.where(masked[:, None, None, :, None].numpy(), np.nan, study_attn)
    return ListCapture(lags, layers, scores, attn, study_attn, prob, lists.test_item.numpy(), method,
                       {**lists.settings(), "lags": lags.tolist(), "method": method, "memory": plan})


def _streamed(subject, lists: RecallLists, sl: slice, lags, layers, keys, extra_hooks, backend):
    """One batch through the kernels: target_logit/target_prob at first occurrence + lag, span mass per study item."""
    from ..patterns.stats import StatsRecorder

    test_pos = lists.test_pos[sl]
    rec = StatsRecorder(layers, stats_request(lists, sl, lags), backend)
    prob = _forward(subject, lists.input_ids[sl], test_pos, lists.study_ids[sl], [rec, *extra_hooks])
    valid = (keys >= 0)[:, None]  # item lag inside the study list

    def rows(name: str, layer: int) -> torch.Tensor:
        t = rec.stats[layer][0][name].float()  # (B, H, N, ...)
        return t.gather(2, test_pos[:, None, :, None].expand(-1, t.shape[1], -1, t.shape[-1]))

    nan = torch.tensor(math.nan)
    score = torch.stack([torch.where(valid, rows("target_logit", l), nan) for l in layers], dim=1)
    attn = torch.stack([torch.where(valid, rows("target_prob", l), nan) for l in layers], dim=1)
    study_attn = torch.stack([rows("span_mass", l) for l in layers], dim=1)
    return score, attn, study_attn, prob
