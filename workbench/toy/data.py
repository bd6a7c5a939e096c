"""Seeded synthetic training sequences for toy models: repeated random tokens, bursty in-context classification,
in-context Markov chains and free-recall lists.

Token ids follow ``workbench.toy.tokenizer``: 0 pad, 1 BOS, 2 EOS (the recall cue), 3 unk, content tokens from 4.
Every generator takes a ``torch.Generator`` and returns a :class:`ToyBatch` whose ``segments`` name the target
positions a researcher wants the loss of separately (e.g. the first presentation vs its repeats).
"""

from __future__ import annotations

import torch

from ..errors import InputError
from .batch import ToyBatch
from .planted.worlds import PLANTED_GENERATORS
from .tokenizer import BOS_ID, EOS_ID, N_SPECIAL

__all__ = ["GENERATORS", "ToyBatch", "bursty_classification", "free_recall_lists", "make_batch", "markov_chains",
           "repeated_tokens"]


def _content(vocab_size: int, needed: int, what: str) -> int:
    """Number of content tokens, checked against what the generator needs."""
    n = vocab_size - N_SPECIAL
    if n < needed:
        raise InputError(f"{what} needs at least {needed} content tokens, but vocab_size {vocab_size} has {n}: "
                         f"raise vocab_size to {needed + N_SPECIAL} or more")
    return n


def _with_bos(body: torch.Tensor) -> torch.Tensor:
    return torch.cat([torch.full((body.shape[0], 1), BOS_ID, dtype=torch.long), body], dim=1)


def _distinct_rows(n_tokens: int, batch: int, length: int, gen: torch.Generator) -> torch.Tensor:
    """(batch, length) content ids with no repeat within a row."""
    return torch.argsort(torch.rand(batch, n_tokens, generator=gen), dim=1)[:, :length] + N_SPECIAL


def repeated_tokens(vocab_size: int, batch: int, gen: torch.Generator, seq_len: int = 32, n_repeats: int = 2,
                    distinct: bool = False, min_len: int | None = None) -> ToyBatch:
    """BOS + a block of ``seq_len`` uniform random tokens repeated ``n_repeats`` times: the later repeats are
    predictable only by induction (Olsson et al. 2022). With ``min_len``, each row draws its own block length
    (period) uniformly from ``[min_len, seq_len]`` and repeats it cyclically to the same total length
    ``1 + n_repeats * seq_len``, so no fixed-offset copy solves the batch. Segments: ``first`` (each row's first
    block), ``repeat`` (the rest)."""
    if seq_len < 1 or n_repeats < 1 or (min_len is not None and not 1 <= min_len <= seq_len):
        raise InputError("repeated tokens need seq_len >= 1, n_repeats >= 1 and 1 <= min_len <= seq_len")
    n = _content(vocab_size, seq_len if distinct else 2, "repeated_tokens")
    block = (_distinct_rows(n, batch, seq_len, gen) if distinct
             else torch.randint(N_SPECIAL, vocab_size, (batch, seq_len), generator=gen))
    period = (torch.full((batch,), seq_len) if min_len is None
              else torch.randint(min_len, seq_len + 1, (batch,), generator=gen))
    body_pos = torch.arange(n_repeats * seq_len)
    ids = _with_bos(block.gather(1, body_pos[None] % period[:, None]))
    pos = torch.arange(ids.shape[1]).expand_as(ids)
    first = (pos >= 1) & (pos <= period[:, None])
    return ToyBatch(ids, pos >= 1, {"first": first, "repeat": pos > period[:, None]},
                    {"kind": "repeated", "seq_len": seq_len, "n_repeats": n_repeats, "distinct": distinct,
                     "min_len": min_len, "period": period})


def markov_chains(vocab_size: int, batch: int, gen: torch.Generator, length: int = 64, n_states: int = 8,
                  concentration: float = 1.0, shared: bool = False) -> ToyBatch:
    """Sequences from random Markov chains: each row draws ``n_states`` tokens and a transition matrix with
    Dirichlet(``concentration``) rows (one matrix for all rows if ``shared``), then walks it from a uniform start.
    Per-sequence chains can only be predicted in context ("statistical induction heads", Edelman et al. 2024).
    Segments: ``early`` (first quarter of the walk) and ``late`` (the rest)."""
    if length < 2 or n_states < 2 or concentration <= 0:
        raise InputError("Markov chains need length >= 2, n_states >= 2 and concentration > 0")
    n = _content(vocab_size, n_states, "markov_chains")
    dirichlet = torch.distributions.Dirichlet(torch.full((n_states,), float(concentration)))
    rows = 1 if shared else batch
    with torch.random.fork_rng(devices=[]):  # Dirichlet samples from the global RNG: seed it from ours
        torch.manual_seed(int(torch.randint(2**62, (1,), generator=gen)))
        trans = dirichlet.sample((rows, n_states)).expand(batch, n_states, n_states)
    states = _distinct_rows(n, 1 if shared else batch, n_states, gen).expand(batch, n_states)
    walk = torch.empty(batch, length, dtype=torch.long)
    walk[:, 0] = torch.randint(n_states, (batch,), generator=gen)
    for t in range(1, length):
        walk[:, t] = torch.multinomial(trans[torch.arange(batch), walk[:, t - 1]], 1, generator=gen)[:, 0]
    ids = _with_bos(states.gather(1, walk))
    pos = torch.arange(ids.shape[1]).expand_as(ids)
    return ToyBatch(ids, pos >= 2, {"early": (pos >= 2) & (pos <= length // 4), "late": pos > length // 4},
                    {"kind": "markov", "length": length, "n_states": n_states, "concentration": concentration,
                     "shared": shared, "transitions": trans, "states": states})


def bursty_classification(vocab_size: int, batch: int, gen: torch.Generator, n_classes: int = 64,
                          exemplars: int = 2, n_labels: int = 8, n_context: int = 8, burst: int = 3,
                          p_bursty: float = 0.9, zipf_exponent: float = 1.0, relabel: bool = False) -> ToyBatch:
    """In-context classification (Chan et al. 2022; Reddy 2024): BOS, ``n_context`` (item, label) pairs, a query
    item and its label. Classes are Zipf(``zipf_exponent``)-distributed; each class has ``exemplars`` item tokens
    and the fixed label ``class % n_labels`` (learnable in weights), or per-row random labels if ``relabel`` (only
    learnable in context). A bursty row (probability ``p_bursty``) holds ``burst`` pairs of the query's class.
    Loss on the query's label only; segments ``bursty`` and ``iid`` split it by row type."""
    if not 1 <= burst <= n_context or n_classes < 2 or n_labels < 2 or exemplars < 1:
        raise InputError("bursty classification needs 1 <= burst <= n_context, n_classes >= 2, n_labels >= 2 "
                         "and exemplars >= 1")
    _content(vocab_size, n_labels + n_classes * exemplars, "bursty_classification")
    label_ids = torch.arange(n_labels) + N_SPECIAL
    item_ids = (torch.arange(n_classes * exemplars) + N_SPECIAL + n_labels).view(n_classes, exemplars)
    zipf = 1.0 / torch.arange(1, n_classes + 1, dtype=torch.float64) ** zipf_exponent
    query = torch.multinomial(zipf.expand(batch, -1), 1, generator=gen)[:, 0]
    classes = torch.multinomial(zipf.expand(batch, -1), n_context, replacement=True, generator=gen)
    bursty = torch.rand(batch, generator=gen) < p_bursty
    for b in torch.nonzero(bursty)[:, 0].tolist():  # the query's class fills `burst` random context slots
        others = torch.multinomial(zipf.index_fill(0, query[b], 0.0), n_context - burst, replacement=True,
                                   generator=gen)
        row = torch.cat([query[b].repeat(burst), others])
        classes[b] = row[torch.randperm(n_context, generator=gen)]
    mapping = (torch.argsort(torch.rand(batch, n_classes, generator=gen), 1) % n_labels if relabel
               else (torch.arange(n_classes) % n_labels).expand(batch, -1))
    all_classes = torch.cat([classes, query[:, None]], 1)  # (B, n_context + 1)
    exemplar = torch.randint(exemplars, all_classes.shape, generator=gen)
    items = item_ids[all_classes, exemplar]
    labels = label_ids[mapping.gather(1, all_classes)]
    ids = _with_bos(torch.stack([items, labels], -1).flatten(1))
    target = torch.zeros_like(ids, dtype=torch.bool)
    target[:, -1] = True
    return ToyBatch(ids, target, {"bursty": target & bursty[:, None], "iid": target & ~bursty[:, None]},
                    {"kind": "bursty", "n_classes": n_classes, "exemplars": exemplars, "n_labels": n_labels,
                     "n_context": n_context, "burst": burst, "p_bursty": p_bursty, "zipf_exponent": zipf_exponent,
                     "relabel": relabel, "query_class": query, "bursty_rows": bursty})


def free_recall_lists(vocab_size: int, batch: int, gen: torch.Generator, list_len: int = 16,
                      p_forward: float = 0.5) -> ToyBatch:
    """BOS, a study list of ``list_len`` distinct tokens, the recall cue (EOS), then every item recalled once:
    a random first item, then with probability ``p_forward`` the next study item (lag +1, if not yet recalled),
    else a uniformly random unrecalled item (forward contiguity as in human free recall, Kahana 1996).
    Loss on the recalled items; segments ``first_recall`` and ``later_recalls``."""
    if list_len < 2 or not 0.0 <= p_forward <= 1.0:
        raise InputError("free-recall lists need list_len >= 2 and 0 <= p_forward <= 1")
    n = _content(vocab_size, list_len, "free_recall_lists")
    study = _distinct_rows(n, batch, list_len, gen)
    order = torch.empty(batch, list_len, dtype=torch.long)
    left = torch.ones(batch, list_len, dtype=torch.bool)
    rows = torch.arange(batch)
    current = torch.multinomial(left.float(), 1, generator=gen)[:, 0]
    for t in range(list_len):
        if t:
            nxt = current + 1
            can_forward = (nxt < list_len) & left[rows, nxt.clamp(max=list_len - 1)]
            forward = can_forward & (torch.rand(batch, generator=gen) < p_forward)
            jump = torch.multinomial(left.float(), 1, generator=gen)[:, 0]
            current = torch.where(forward, nxt, jump)
        order[:, t] = current
        left[rows, current] = False
    ids = _with_bos(torch.cat([study, torch.full((batch, 1), EOS_ID), study.gather(1, order)], 1))
    pos = torch.arange(ids.shape[1]).expand_as(ids)
    cue = list_len + 1
    return ToyBatch(ids, pos > cue, {"first_recall": pos == cue + 1, "later_recalls": pos > cue + 1},
                    {"kind": "recall", "list_len": list_len, "p_forward": p_forward, "order": order})


GENERATORS = {"repeated": repeated_tokens, "markov": markov_chains, "bursty": bursty_classification,
              "recall": free_recall_lists, **PLANTED_GENERATORS}


def make_batch(data: dict, vocab_size: int, batch: int, seed: int) -> ToyBatch:
    """One batch from a data config ``{"kind": ..., params}``; a ``[lo, hi]`` list for an int parameter draws it
    uniformly (inclusive) for this batch. Deterministic in ``seed``."""
    data = dict(data)
    kind = data.pop("kind", "repeated")
    if kind not in GENERATORS:
        raise InputError(f"unknown data kind {kind!r}: choose from {', '.join(GENERATORS)}")
    gen = torch.Generator().manual_seed(int(seed))
    params = {}
    for key, value in data.items():
        if isinstance(value, (list, tuple)):
            if len(value) != 2 or not all(isinstance(v, int) for v in value) or value[0] > value[1]:
                raise InputError(f"data.{key} = {value!r}: a range must be [low, high] integers with low <= high")
            value = int(torch.randint(value[0], value[1] + 1, (1,), generator=gen))
        params[key] = value
    try:
        return GENERATORS[kind](vocab_size, batch, gen, **params)
    except TypeError as err:
        raise InputError(f"bad parameter for data kind {kind!r}: {err}") from None
