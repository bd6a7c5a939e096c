"""An induction head's previous-token partner: the earlier head whose ablation most lowers its induction score.

Olsson et al. 2022: an induction head in layer l uses K-composition with a previous-token head in an earlier layer;
zero-ablating that partner should destroy the induction head's prefix matching. This module measures it directly:
for every head of an earlier layer, its previous-token score and the induction score of the chosen head with the
earlier head's output zeroed (workbench.interventions.ZeroHead), on the scan's repeated-random-token stimulus.
"""

from __future__ import annotations

import pandas as pd

from ..errors import InputError
from ..interventions import ZeroHead, apply
from ..patterns import capture
from ..scores import induction_score, previous_token_score
from ..stimuli import repeated_random_tokens


def previous_token_partners(subject, head: tuple[int, int], seq_len: int = 50, batch: int = 10,
                            seed: int = 0) -> pd.DataFrame:
    """Per earlier-layer head: previous-token score, and ``head``'s induction score (prefix matching, Olsson et al.
    2022) with that head zero-ablated; ``drop`` = unablated minus ablated. Rows sorted by ``drop``, largest first."""
    layer, h = (int(x) for x in head)
    subject.check_head(layer, h)
    if layer == 0:
        raise InputError(f"head L{layer}H{h} is in the first layer: an induction head's partner sits in an earlier "
                         "layer, so pick a head in layer >= 1")
    stim = repeated_random_tokens(subject, seq_len, 2, batch, seed)
    earlier = [(l_, h_) for l_ in range(layer) for h_ in range(subject.n_heads)]
    cap = capture(subject, stim.input_ids, layers=list(range(layer + 1)))
    base = float(induction_score(cap.pattern(layer, h), stim.induction_target))
    rows = []
    for l_, h_ in earlier:
        with apply(subject, ZeroHead([(l_, h_)])):
            ablated = capture(subject, stim.input_ids, heads=[(layer, h)])
        score = float(induction_score(ablated.pattern(layer, h), stim.induction_target))
        rows.append({"layer": l_, "head": h_, "previous_token": float(previous_token_score(cap.pattern(l_, h_))),
                     "induction_ablated": score, "drop": base - score})
    table = pd.DataFrame(rows).sort_values("drop", ascending=False, kind="stable").reset_index(drop=True)
    table.attrs.update(head=(layer, h), induction=base, stimulus=stim.settings())
    return table
