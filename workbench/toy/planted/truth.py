"""Ground truth for planted mechanisms (METHODS s13), found without the detectors under test.

A head belongs to the planted mechanism when (1) at the answer positions of the items that need the mechanism it
puts at least ``ATTENTION_THRESHOLD`` of its attention on the token the mechanism reads there (the IN year, the
context's attribute of the queried entity, the stored value token being produced; for the year, which is read
rather than copied, also on positions that carry it: where a lower-layer head puts at least ``RELAY`` of its
attention on the year, as when a layer-0 head copies the year into the next position; ``relay=`` applies this to any
world, as when a layer-0 head gathers a stored pair into the following key), and (2) zeroing it alone costs
the control items (time-invariant facts, memory-cued conflicts, memorised keys) at most ``CONTROL_DROP`` accuracy:
a head that the control needs as much is doing something else as well. Then the whole set is checked by ablation:
zeroing it must drop the mechanism's accuracy while the control stays, unlike random sets of as many other heads.

Accuracy is exact match of the greedy answer (teacher-forced) on held-out items; ablation is zero ablation of the
head's output z (``ZeroHead``), the same as the sweeps' ``zero`` intervention.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch

from ...errors import InputError
from ...interventions import ZeroHead, apply
from ...patterns import capture
from .tasks import correct
from .worlds import PlantedItems

Head = tuple[int, int]
ATTENTION_THRESHOLD = 0.3  # share of the head's attention on the needed token (uniform over ~20 keys is ~0.05)
CONTROL_DROP = 0.2  # largest control-accuracy drop a mechanism head may cause when zeroed alone
RELAY = 0.3  # temporal facts: a position counts as the year when a lower-layer head reads the year from it this much
# per world: (items that need the mechanism, control items that do not)
MECHANISM = {"temporal_facts": ("temporal", "invariant"), "conflict_facts": ("context", "memory"),
             "kv_retrieval": ("retrieval", "closed")}
# the year is *read* (its era decoded downstream), so it may reach the answer position through a relay position;
# the context attribute and the needle value are *copied*, which takes attention to the token itself
RELAYED = {"temporal_facts": RELAY, "conflict_facts": None, "kv_retrieval": None}


def _names(heads) -> str:
    return " ".join(f"L{layer}H{head}" for layer, head in heads)


@torch.no_grad()
def mechanism_attention(subject, items: PlantedItems, relay: float | None = None, batch_size: int = 128) -> np.ndarray:
    """(L, H) mean attention from each answer position to the token the mechanism reads there (``source_pos``), over
    the items and answer tokens that have one; [0, 1]. With ``relay``, a position also counts as that token for a
    head when some head of a lower layer puts at least ``relay`` of its attention from there on the token (the
    position carries it after the layer below)."""
    src = items.source_pos
    mask = src >= 0
    if not mask.any():
        raise InputError("these items have no mechanism token (e.g. only control items): pass the mechanism's items")
    rows = items.answer_positions
    total = torch.zeros(subject.n_layers, subject.n_heads, dtype=torch.float64)
    for start in range(0, len(items), batch_size):
        part = slice(start, start + batch_size)
        cap = capture(subject, items.input_ids[part], rows=None if relay else rows)
        s, m = src[part].clamp(min=0), mask[part]
        b, n = s.shape[0], items.input_ids.shape[1]
        carrier = torch.zeros(b, s.shape[1], n, dtype=torch.bool)  # (b, A, N): positions that count as the source
        carrier.scatter_(2, s[..., None], True)
        for layer in range(subject.n_layers):
            pattern = cap.patterns[layer]
            at_rows = pattern[:, :, rows] if relay else pattern  # (b, H, A, N)
            got = (at_rows * carrier[:, None].float()).sum(-1)  # (b, H, A)
            total[layer] += (got * m[:, None]).sum((0, 2)).double()
            if relay:  # what this layer's heads read from the source, for the layers above
                reads = pattern.gather(-1, s[:, None, None, :].expand(-1, pattern.shape[1], n, -1))  # (b, H, N, A)
                carrier |= (reads.amax(1) >= relay).transpose(1, 2)
    return (total / mask.sum()).numpy()


def group_accuracy(subject, items: PlantedItems, heads=()) -> dict[str, float]:
    """Exact-match accuracy per item group with ``heads`` zeroed (none: intact)."""
    with apply(subject, *([ZeroHead(list(heads))] if heads else [])):
        ok = correct(subject, items)
    return {str(g): float(ok[items.group == g].mean()) for g in np.unique(items.group)}


@dataclass
class GroundTruth:
    """The planted heads of one model and the evidence: attention map, per-head control drops, set ablation."""

    kind: str
    heads: list[Head]
    attention: np.ndarray  # (L, H) mechanism_attention on the mechanism's items
    control_drop: dict  # candidate head -> control accuracy drop when zeroed alone
    intact: dict  # group -> accuracy
    ablated: dict  # group -> accuracy with the ground-truth heads zeroed
    settings: dict = field(default_factory=dict)

    @property
    def mechanism(self) -> str:
        return MECHANISM[self.kind][0]

    @property
    def control(self) -> str:
        return MECHANISM[self.kind][1]

    def summary(self) -> dict:
        """JSON-ready: the heads, their attention, and the set ablation's accuracy drops."""
        m, c = self.mechanism, self.control
        return {"kind": self.kind, "heads": _names(self.heads), "n_heads": len(self.heads),
                "attention": {_names([h]): round(float(self.attention[h]), 3) for h in self.heads},
                "excluded": {_names([h]): round(d, 3) for h, d in self.control_drop.items() if h not in self.heads},
                "intact": self.intact, "ablated": self.ablated,
                f"drop_{m}": self.intact[m] - self.ablated[m], f"drop_{c}": self.intact[c] - self.ablated[c],
                **self.settings}


def ground_truth(subject, items: PlantedItems, attention_threshold: float = ATTENTION_THRESHOLD,
                 control_drop: float = CONTROL_DROP, relay: float | None | str = "world") -> GroundTruth:
    """The planted heads of ``subject`` on held-out ``items`` (both groups): attention criterion, then control check
    (``relay``: the relay threshold, None for the token itself only, "world" for the world's own, ``RELAYED``)."""
    if items.kind not in MECHANISM:
        raise InputError(f"no ground truth defined for {items.kind!r}: use one of {', '.join(MECHANISM)}")
    mech, ctrl = MECHANISM[items.kind]
    if not (items.group == mech).any() or not (items.group == ctrl).any():
        raise InputError(f"ground truth needs both {mech} and {ctrl} items")
    relay = RELAYED[items.kind] if relay == "world" else relay
    attention = mechanism_attention(subject, items.of(mech), relay=relay)
    intact = group_accuracy(subject, items)
    candidates = [(int(l), int(h)) for l, h in zip(*np.nonzero(attention >= attention_threshold))]
    control = items.of(ctrl)
    drops = {h: intact[ctrl] - group_accuracy(subject, control, [h])[ctrl] for h in candidates}
    heads = [h for h in candidates if drops[h] <= control_drop]
    ablated = group_accuracy(subject, items, heads) if heads else dict(intact)
    return GroundTruth(items.kind, heads, attention, drops, intact, ablated,
                       {"attention_threshold": attention_threshold, "control_drop": control_drop, "relay": relay,
                        "n_items": {g: int((items.group == g).sum()) for g in (mech, ctrl)}})


def random_sets(n_layers: int, n_heads: int, k: int, exclude, n_draws: int, seed: int) -> list[list[Head]]:
    """Up to ``n_draws`` distinct seeded sets of k heads outside ``exclude`` (fewer when fewer exist; none when
    fewer than k heads lie outside it, e.g. a set that covers most of a 2-layer model)."""
    skip = set(map(tuple, exclude))
    pool = [(l, h) for l in range(n_layers) for h in range(n_heads) if (l, h) not in skip]
    if len(pool) < k:
        return []
    rng = np.random.default_rng(seed)
    found: list[list[Head]] = []
    for _ in range(50 * n_draws):
        draw = sorted(pool[i] for i in rng.choice(len(pool), size=k, replace=False))
        if draw not in found:
            found.append(draw)
        if len(found) == n_draws:
            break
    return found


def ablation_contrast(subject, items: PlantedItems, heads, n_random: int = 5, seed: int = 0) -> pd.DataFrame:
    """Accuracy drops of the mechanism and control groups when ``heads`` are zeroed, and when as many random other
    heads are (up to ``n_random`` distinct seeded sets); one row per condition."""
    heads = [tuple(h) for h in heads]
    if not heads:
        raise InputError("give at least one head to zero")
    mech, ctrl = MECHANISM[items.kind]
    intact = group_accuracy(subject, items)
    rows = []
    sets = [("heads", heads)] + [("random", h) for h in random_sets(subject.n_layers, subject.n_heads, len(heads),
                                                                    heads, n_random, seed)]
    for condition, chosen in sets:
        acc = group_accuracy(subject, items, chosen)
        rows.append({"condition": condition, "heads": _names(chosen), mech: acc[mech], ctrl: acc[ctrl],
                     f"drop_{mech}": intact[mech] - acc[mech], f"drop_{ctrl}": intact[ctrl] - acc[ctrl]})
    table = pd.DataFrame(rows)
    table.attrs["intact"] = intact
    return table
