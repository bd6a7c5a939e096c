"""Synthetic training data: each generator produces the structure it promises, deterministically in its seed."""

import pytest
import torch

from workbench.errors import InputError
from workbench.toy.data import (bursty_classification, free_recall_lists, make_batch, markov_chains,
                                repeated_tokens)
from workbench.toy.tokenizer import BOS_ID, EOS_ID, N_SPECIAL


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def test_repeated_tokens_fixed_period():
    b = repeated_tokens(50, 6, gen(), seq_len=7, n_repeats=3, distinct=True)
    ids = b.input_ids
    assert ids.shape == (6, 22) and (ids[:, 0] == BOS_ID).all() and (ids[:, 1:] >= N_SPECIAL).all()
    assert (ids[:, 1:8] == ids[:, 8:15]).all() and (ids[:, 8:15] == ids[:, 15:22]).all()
    assert all(len(set(row[1:8].tolist())) == 7 for row in ids)  # distinct within the block
    assert b.segments["first"][:, 1:8].all() and not b.segments["first"][:, 8:].any()
    assert b.segments["repeat"][:, 8:].all() and b.loss_mask[:, 1:].all() and not b.loss_mask[:, 0].any()


def test_repeated_tokens_per_row_periods():
    b = repeated_tokens(60, 64, gen(1), seq_len=20, n_repeats=2, min_len=4)
    period = b.info["period"]
    assert period.min() >= 4 and period.max() <= 20 and len(set(period.tolist())) > 8
    assert b.input_ids.shape == (64, 41)
    for row, p in zip(b.input_ids, period.tolist()):
        body = row[1:]
        assert (body[p:] == body[:-p]).all()  # periodic with the row's own period
        assert b.segments["repeat"][0].sum() >= 20
    first = b.segments["first"]
    assert (first.sum(1) == period).all() and not (first & b.segments["repeat"]).any()


def test_markov_chains_follow_their_transition_matrix():
    b = markov_chains(40, 200, gen(2), length=400, n_states=3, concentration=0.5)
    states, trans = b.info["states"], b.info["transitions"]
    ids = b.input_ids[:, 1:]
    assert ((ids[..., None] == states[:, None, :]).sum(-1) == 1).all()  # every token is one of the row's states
    idx = (ids[..., None] == states[:, None, :]).float().argmax(-1)
    counts = torch.zeros(200, 3, 3)
    counts.scatter_add_(1, idx[:, :-1, None].expand(-1, -1, 3),
                        torch.nn.functional.one_hot(idx[:, 1:], 3).float())
    empirical = counts.sum(0) / counts.sum((0, 2))[:, None]  # pooled over rows: compare with the mean matrix
    weights = counts.sum(2) / counts.sum((0, 2))  # (rows, from-state) share of visits
    expected = (weights[..., None] * trans).sum(0)
    assert (empirical - expected).abs().max() < 0.02
    shared = markov_chains(40, 4, gen(3), length=10, shared=True)
    assert (shared.info["states"] == shared.info["states"][0]).all()


def test_bursty_classification_structure():
    b = bursty_classification(100, 400, gen(4), n_classes=20, exemplars=2, n_labels=4, n_context=6, burst=3,
                              p_bursty=0.5)
    ids = b.input_ids
    assert ids.shape == (400, 1 + 2 * 7) and b.loss_mask.sum() == 400 and b.loss_mask[:, -1].all()
    items, labels = ids[:, 1::2], ids[:, 2::2]
    classes = (items - N_SPECIAL - 4) // 2
    assert (labels == N_SPECIAL + classes % 4).all()  # fixed labels: class mod n_labels
    query = b.info["query_class"]
    assert (classes[:, -1] == query).all()
    in_context = (classes[:, :-1] == query[:, None]).sum(1)
    bursty = b.info["bursty_rows"]
    assert (in_context[bursty] == 3).all() and 0.4 < bursty.float().mean() < 0.6
    assert (b.segments["bursty"].sum(1) == bursty.long()).all()
    # Zipf: class 0 is drawn about 1 / H_20 of the time in iid slots
    iid_share = (classes[~bursty, :-1] == 0).float().mean()
    assert abs(iid_share - 1 / sum(1 / k for k in range(1, 21))) < 0.05
    relabel = bursty_classification(100, 50, gen(5), n_classes=20, n_labels=4, relabel=True)
    items, labels = relabel.input_ids[:, 1::2], relabel.input_ids[:, 2::2]
    fixed = N_SPECIAL + ((items - N_SPECIAL - 4) // 2) % 4
    assert (labels != fixed).any()


def test_free_recall_lists_recall_every_item_with_forward_contiguity():
    b = free_recall_lists(80, 300, gen(6), list_len=10, p_forward=0.7)
    ids = b.input_ids
    study, cue, recall = ids[:, 1:11], ids[:, 11], ids[:, 12:]
    assert (cue == EOS_ID).all() and (study.sort(1).values == recall.sort(1).values).all()
    order = b.info["order"]
    assert (study.gather(1, order) == recall).all()
    # where the next study item was still unrecalled, P(lag +1) = p_forward + (1 - p_forward) / items left
    hits, expected = [], []
    for row in order.tolist():
        for t in range(1, 10):
            nxt = row[t - 1] + 1
            if nxt < 10 and nxt not in row[:t]:
                hits.append(row[t] == nxt)
                expected.append(0.7 + 0.3 / (10 - t))
    assert abs(sum(hits) / len(hits) - sum(expected) / len(expected)) < 0.03
    assert b.segments["first_recall"][:, 12].all() and b.loss_mask[:, 12:].all() and not b.loss_mask[:, :12].any()


def test_make_batch_is_seeded_and_draws_ranges():
    data = {"kind": "repeated", "seq_len": [5, 9]}
    a, b = make_batch(data, 40, 3, seed=11), make_batch(data, 40, 3, seed=11)
    assert torch.equal(a.input_ids, b.input_ids)
    lengths = {make_batch(data, 40, 1, seed=s).info["seq_len"] for s in range(40)}
    assert lengths == set(range(5, 10))
    for kind in ("markov", "bursty", "recall"):
        assert make_batch({"kind": kind}, 200, 2, seed=0).input_ids.shape[0] == 2


def test_bad_data_configs_say_what_to_change():
    with pytest.raises(InputError, match="choose from"):
        make_batch({"kind": "zipf"}, 40, 2, 0)
    with pytest.raises(InputError, match="raise vocab_size"):
        make_batch({"kind": "recall", "list_len": 50}, 40, 2, 0)
    with pytest.raises(InputError, match="bad parameter"):
        make_batch({"kind": "markov", "states": 3}, 40, 2, 0)
    with pytest.raises(InputError, match="low <= high"):
        make_batch({"kind": "repeated", "seq_len": [9, 5]}, 40, 2, 0)
    with pytest.raises(InputError, match="min_len"):
        repeated_tokens(40, 2, gen(), seq_len=5, min_len=6)
