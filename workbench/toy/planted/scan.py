"""The opt-in Atlas detector ``planted``: per head, the ground truth's attention criterion on a planted model.

It needs the run's planted data config in the scan settings (``train_data``; ``workbench train`` passes it when
scoring checkpoints), so a planted run's per-checkpoint atlas follows the mechanism forming during training.
"""

from __future__ import annotations

from ...detectors import Column, Detector, register
from ...errors import InputError
from .truth import MECHANISM, RELAYED, mechanism_attention
from .worlds import WORLDS, world


def _planted(subject, ctx):
    data = ctx.settings.get("train_data")
    if not isinstance(data, dict) or data.get("kind") not in WORLDS:
        raise InputError("the planted detector needs a planted run's data config in settings['train_data'] "
                         f"(kind one of {', '.join(WORLDS)}); it scores checkpoints of such runs")
    w = world(data)
    items = w.all_test_items(ctx.seed).of(MECHANISM[w.kind][0])
    ctx.stimuli["planted"] = {"kind": w.kind, "items": len(items), "group": MECHANISM[w.kind][0],
                              "split": "test", "seed": ctx.seed}
    return {"planted_attention": mechanism_attention(subject, items, relay=RELAYED[w.kind])}


register(Detector("planted", {"planted_attention": Column(
    "mean attention from each answer position to the token the planted mechanism reads there (temporal facts: the "
    "IN year, or a position a lower-layer head copied it into; conflict facts: the context's attribute of the "
    "queried entity, CTX-cued items; kv retrieval: the stored value token being produced), over the world's "
    "held-out items", "METHODS.md s13 (planted mechanisms)", "[0, 1]")},
    _planted, "the planted mechanism's attention (planted toy runs only)"))
