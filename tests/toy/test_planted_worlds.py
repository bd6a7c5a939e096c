"""Planted-mechanism worlds: each item has the structure, answer and split its docstring promises, seeded."""

import numpy as np
import pytest
import torch

from workbench.errors import InputError
from workbench.toy.data import make_batch
from workbench.toy.planted import world
from workbench.toy.tokenizer import BOS_ID, EOS_ID, N_SPECIAL


def content(ids):
    return (torch.as_tensor(ids) - N_SPECIAL).numpy()


def test_temporal_items_answer_by_era_only_when_time_conditioned():
    w = world({"kind": "temporal_facts"})
    items = w.sample("train", 400, np.random.default_rng(0))
    t = w.tables
    ids = content(items.input_ids)
    assert items.input_ids.shape == (400, 20) and (items.input_ids[:, 0] == BOS_ID).all()
    assert items.prompt_len == 19 and (ids[:, 18] == w.token("was")).all()
    rows = np.arange(400)
    year_pos = items.source_pos[:, 0].numpy()
    assert (ids[rows, year_pos - 1] == w.token("in")).all()  # the IN marker precedes the year that counts
    decoy = np.array([m["decoy_pos"] for m in items.meta])
    assert (ids[rows, decoy - 1] == w.token("born")).all() and (np.abs(decoy - year_pos) >= 2).all()
    assert ((ids == w.token("in")).sum(1) == 1).all() and ((ids == w.token("born")).sum(1) == 1).all()
    for row, pos, m in zip(ids, year_pos, items.meta):
        year = row[pos] - w.token("year")
        assert year == m["year"]
        era = year // w.years_per_era
        expected = t["temporal"][m["entity"], era] if m["group"] == "temporal" else t["invariant"][m["entity"]]
        assert row[-1] - w.token("attribute") == expected and m["era"] == era
        entity_token = w.token(m["group"], m["entity"])
        assert row[17] == entity_token
    assert set(np.unique(items.group)) == {"temporal", "invariant"}
    assert all(len(set(r)) == w.n_eras for r in t["temporal"])  # a different attribute in every era


def test_temporal_split_holds_out_one_year_per_entity_and_era():
    w = world({"kind": "temporal_facts", "n_entities": 6})
    held = w.tables["held"]
    train = w.sample("train", 2000, np.random.default_rng(1))
    test = w.all_test_items()
    assert len(test) == 2 * 6 * w.n_eras
    for items, want in ((train, False), (test, True)):
        for m in items.meta:
            is_held = m["year"] % w.years_per_era == held[m["group"]][m["entity"], m["era"]]
            assert is_held == want
    swapped = w.year_swapped(test)
    diff = (swapped.input_ids != test.of("temporal").input_ids).sum(1)
    assert (diff == 2).all()  # the year and the answer
    assert all(b["era"] == (a["era"] + 1) % w.n_eras for a, b in zip(test.of("temporal").meta, swapped.meta))


def test_conflict_training_rows_never_state_held_out_attributes():
    w = world({"kind": "conflict_facts", "n_pairs": 3, "n_queries": 3})
    t = w.tables
    batch = make_batch({"kind": "conflict_facts", "n_pairs": 3, "n_queries": 3}, 72, 300, 5)
    ids = content(batch.input_ids)
    assert batch.input_ids.shape == (300, 16) and batch.loss_mask.sum() == 900
    for r, row in enumerate(ids):
        stated = {row[1 + 2 * i] - w.token("entity"): row[2 + 2 * i] - w.token("attribute") for i in range(3)}
        for e, a in stated.items():
            assert a != t["memory"][e] and not t["held_out"][e, a]
        asked = []
        for q in range(3):
            cue, e, a = row[7 + 3 * q: 10 + 3 * q]
            e, a = e - w.token("entity"), a - w.token("attribute")
            asked.append(e)
            group = next(g for g, m in batch.segments.items() if m[r, 9 + 3 * q])
            if group == "closed":
                assert e not in stated and cue == w.token("mem") and a == t["memory"][e]
            elif group == "context":
                assert stated[e] == a and cue == w.token("ctx")
            else:
                assert e in stated and cue == w.token("mem") and a == t["memory"][e]
        assert len(set(asked)) == 3
    assert {"closed", "context", "memory"} == set(batch.segments)


def test_conflict_test_items_state_held_out_attributes_and_have_closed_book_twins():
    w = world({"kind": "conflict_facts"})
    t = w.tables
    items = w.all_test_items()
    assert len(items) == 2 * 2 * w.n_entities and set(np.unique(items.group)) == {"context", "memory"}
    ids = content(items.input_ids)
    src = items.source_pos[:, 0].numpy()
    for row, s, m, foil in zip(ids, src, items.meta, items.foil.numpy()):
        e, c = m["entity"], row[s] - w.token("attribute")
        assert row[s - 1] - w.token("entity") == e and t["held_out"][e, c] and c == m["context"]
        assert row[-2] - w.token("entity") == e
        assert m["answer"] == (c if m["group"] == "context" else t["memory"][e])
        other = t["memory"][e] if m["group"] == "context" else c
        assert foil - N_SPECIAL - w.token("attribute") == other
    twins = w.closed_book(items)
    for row, m in zip(content(twins.input_ids), twins.meta):
        stated = [row[1 + 2 * i] - w.token("entity") for i in range(w.n_pairs)]
        assert m["entity"] not in stated and row[-1] - w.token("attribute") == t["memory"][m["entity"]]
        assert row[-3] == w.token("mem")


def test_kv_retrieval_items_copy_the_queried_value_or_recall_a_memorised_one():
    w = world({"kind": "kv_retrieval"})
    items = w.all_test_items(n=200, p_closed=0.3)
    ids = items.input_ids
    assert ids.shape == (200, 24) and (ids[:, -1] == EOS_ID).all() and items.answer_len == 3
    store = content(ids[:, 1:19]).reshape(200, 6, 3)
    for row, st, src, m in zip(ids, store, items.source_pos, items.meta):
        values = st[:, 1:].ravel()
        assert len(set(values.tolist())) == values.size  # values distinct within a store
        if m["group"] == "retrieval":
            assert (row[src[:2]] == row[21:23]).all() and src[2] == -1
            assert row[20] == row[src[0] - 1]  # the query key is the stored key
        else:
            mem = int(content(row[20:21])[0] - w.token("memorized_key"))
            assert (content(row[21:23]) == w.token("memorized_value", w.tables["memorized"][mem])).all()
            assert (src == -1).all()
    train = make_batch({"kind": "kv_retrieval"}, 72, 50, 3)
    assert train.input_ids.shape == (50, 1 + 18 + 3 * 5) and int(train.loss_mask.sum()) == 50 * 9
    assert ((train.input_ids == EOS_ID).sum(1) == 3).all()


def test_batches_are_deterministic_and_the_test_stream_differs():
    for data, vocab in (({"kind": "temporal_facts"}, 104), ({"kind": "conflict_facts"}, 72),
                        ({"kind": "kv_retrieval"}, 72)):
        a, b = make_batch(data, vocab, 16, 7), make_batch(data, vocab, 16, 7)
        assert torch.equal(a.input_ids, b.input_ids) and torch.equal(a.loss_mask, b.loss_mask)
        assert not torch.equal(a.input_ids, make_batch(data, vocab, 16, 8).input_ids)
        test = make_batch({**data, "split": "test"}, vocab, 16, 7)
        assert test.loss_mask.any() and test.input_ids.shape[0] == 16


@pytest.mark.parametrize("data, vocab, message", [
    ({"kind": "temporal_facts", "n_eras": 1}, 104, "n_eras >= 2"),
    ({"kind": "temporal_facts"}, 64, "raise the model's vocab_size to 103"),
    ({"kind": "conflict_facts", "wrong": 1}, 72, "unknown conflict_facts parameter"),
    ({"kind": "kv_retrieval", "n_queries": 9}, 72, "n_queries <= n_pairs"),
    ({"kind": "kv_retrieval", "split": "valid"}, 72, "split must be one of train, test"),
])
def test_bad_world_settings_say_what_to_change(data, vocab, message):
    with pytest.raises(InputError, match=message):
        make_batch(data, vocab, 4, 0)
