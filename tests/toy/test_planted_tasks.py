"""Planted-mechanism plumbing on small random toy models: task adapters feed the real detectors, the attention
criterion equals a by-hand loop (relays included), and the ground-truth and check helpers count what they say."""

import json

import numpy as np
import pytest
import torch

from workbench.errors import InputError
from workbench.patterns import capture
from workbench.retrieval import run_niah
from workbench.sweeps import run_sweep
from workbench.tasks import METRICS, metric_values
from workbench.toy import build
from workbench.toy.planted import (held_out_items, mechanism_attention, needle_tests, planted_task, precision_recall,
                                   run_data, world)
from workbench.toy.planted.truth import random_sets

TEMPORAL = {"kind": "temporal_facts", "n_entities": 4, "n_eras": 2, "years_per_era": 2, "n_attributes": 4,
            "n_filler": 4, "body": 6}
CONFLICT = {"kind": "conflict_facts", "n_entities": 8, "n_attributes": 5, "n_pairs": 2, "n_queries": 2}
KV = {"kind": "kv_retrieval", "n_keys": 6, "n_values": 10, "n_pairs": 3, "value_len": 2, "n_queries": 2,
      "n_memorized": 2}


def random_toy(vocab, seed=0, **fields):
    subject = build({"vocab_size": vocab, "hidden_size": 32, "num_attention_heads": 4, "num_hidden_layers": 2,
                     **fields}, seed=seed)
    with torch.no_grad():  # far from uniform attention
        for p in subject.model.parameters():
            p.normal_(0, 0.3) if p.ndim >= 2 else p.uniform_(0.5, 1.5)
    return subject


def test_temporal_tasks_score_the_answer_of_each_held_out_item():
    subject = random_toy(40, intermediate_size=16)
    items = world(TEMPORAL).all_test_items()
    task = planted_task(subject, "temporal", data=TEMPORAL, filter=False)
    temporal = items.of("temporal")
    assert task.name == "temporal" and task.n_total == len(temporal) == 8 and task.default_metric == "answer_logprob"
    b = task.batch
    assert torch.equal(b.input_ids, temporal.input_ids[:, :-1])
    assert (b.target_pos[:, 0] == temporal.prompt_len - 1).all()
    assert torch.equal(b.target_ids[:, 0], temporal.input_ids[:, -1])
    logits = subject.model(input_ids=b.input_ids).logits
    want = logits[:, -1].log_softmax(-1).gather(1, b.target_ids)[:, 0]
    got = metric_values(subject, b, [METRICS["answer_logprob"]])["answer_logprob"]
    assert np.allclose(got, want.detach().double().numpy(), atol=1e-5)
    invariant = planted_task(subject, "temporal_invariant", data=TEMPORAL, filter=False)
    assert invariant.n_total == 8 and all(r["group"] == "invariant" for r in invariant.batch.items)
    try:
        kept = planted_task(subject, "temporal", data=TEMPORAL)  # filter: items the model answers right
    except InputError as err:
        assert "none of the 8 items passes the filter" in str(err)
    else:
        assert (metric_values(subject, kept.batch, [METRICS["exact_match"]])["exact_match"] == 1).all()
    with pytest.raises(InputError, match="needs a kv_retrieval model"):
        planted_task(subject, "kv_retrieval", data=TEMPORAL)


def test_knowledge_conflict_task_has_memory_target_and_context_foil(tmp_path):
    subject = random_toy(24, intermediate_size=16)
    w = world(CONFLICT)
    task = planted_task(subject, "knowledge_conflict", data=CONFLICT, filter=False)
    assert task.default_metric == "logit_diff" and len(task.batch) == 2 * 2 * 8
    a0 = int(w.token("attribute")) + 4
    for row, target, foil in zip(task.batch.items, task.batch.target_ids[:, 0], task.batch.foil_ids):
        assert int(target) - a0 == row["memory"] and int(foil) - a0 == row["context"]
    # the memory-vs-context analysis and a sweep run unchanged on it
    from workbench.knowledge.memory_context import head_contributions

    contrib = head_contributions(subject, task.batch, "zero")
    assert contrib.shape == (len(task.batch), 2, 4) and np.isfinite(contrib).all()
    df = run_sweep(subject, task, tmp_path / "sweep")
    assert len(df) == 8 and set(df["metric"]) == {"logit_diff"}
    assert np.allclose(-df.sort_values(["layer", "head"])["effect"].to_numpy(), contrib.mean(0).ravel(), atol=1e-6)


def test_needle_tests_are_niah_tests_with_exact_spans():
    subject = random_toy(40)
    items = held_out_items(KV)
    tests = needle_tests(items)
    retrieval = items.of("retrieval")
    assert len(tests) == len(retrieval) > 0
    for t, row, src in zip(tests, retrieval.input_ids, retrieval.source_pos):
        assert t.length == retrieval.prompt_len and torch.equal(t.input_ids, row[:retrieval.prompt_len])
        assert list(range(*t.answer_span)) == src[:2].tolist()
        assert t.needle_span == (t.answer_span[0] - 1, t.answer_span[1])
        assert subject.tokenizer.decode(t.answer_ids.tolist()) == t.needle.answer
        assert t.input_ids[-1] == t.input_ids[t.needle_span[0]]  # the query asks the needle's key
    run = run_niah(subject, tests, max_new_tokens=items.answer_len, batch_size=16)
    assert run.head_scores.shape == (len(tests), 2, 4) and len(run.table) == len(tests)


def reference_attention(subject, items, relay=None):
    """By-hand loop: per item, answer token and head, the attention on the source (or on its carriers)."""
    cap = capture(subject, items.input_ids)
    out = np.zeros((subject.n_layers, subject.n_heads))
    count = 0
    for b in range(len(items)):
        for a, q in enumerate(items.answer_positions.tolist()):
            s = int(items.source_pos[b, a])
            if s < 0:
                continue
            count += 1
            carriers = {s}
            for layer in range(subject.n_layers):
                for h in range(subject.n_heads):
                    out[layer, h] += sum(float(cap.patterns[layer][b, h, q, j]) for j in carriers)
                if relay:
                    n = items.input_ids.shape[1]
                    carriers |= {j for j in range(n) if float(cap.patterns[layer][b, :, j, s].max()) >= relay}
    return out / count


@pytest.mark.parametrize("data, vocab, relay", [(TEMPORAL, 40, None), (TEMPORAL, 40, 0.2), (KV, 40, None),
                                                (CONFLICT, 24, None)])
def test_mechanism_attention_matches_a_by_hand_loop(data, vocab, relay):
    subject = random_toy(vocab, seed=3)
    items = world(data).all_test_items()
    items = items.of({"temporal_facts": "temporal", "kv_retrieval": "retrieval", "conflict_facts": "context"}[
        data["kind"]])
    got = mechanism_attention(subject, items, relay=relay, batch_size=5)
    assert np.allclose(got, reference_attention(subject, items, relay), atol=1e-6)
    if relay:  # carriers only add attention, and here they do
        direct = mechanism_attention(subject, items)
        assert (got >= direct - 1e-9).all() and (got > direct + 1e-3).any()


def test_run_data_finds_the_training_config_above_a_checkpoint(tmp_path):
    folder = tmp_path / "run" / "checkpoints" / "step-0000010"
    folder.mkdir(parents=True)
    (tmp_path / "run" / "train_config.json").write_text(json.dumps({"data": KV}))

    class Loaded:
        source = str(folder)

    assert run_data(Loaded()) == KV and run_data(tmp_path / "run") == KV and run_data(KV) == KV
    with pytest.raises(InputError, match="no train_config.json"):
        run_data(tmp_path)
    with pytest.raises(InputError, match="not a planted-mechanism data kind"):
        run_data({"kind": "repeated"})


def test_precision_recall_and_random_sets():
    scores = np.array([[0.9, 0.1, 0.5], [0.2, 0.8, np.nan]])
    pr = precision_recall(scores, [(0, 0), (1, 1), (1, 2)], k=2)
    assert pr["top"] == [(0, 0), (1, 1)] and pr["precision"] == 1.0 and pr["recall"] == pytest.approx(2 / 3)
    pr = precision_recall(scores, [(0, 2)], k=3)
    assert pr["hits"] == 1 and pr["precision"] == pytest.approx(1 / 3) and pr["recall"] == 1.0
    sets = random_sets(2, 3, 2, [(0, 0), (1, 1)], n_draws=10, seed=0)
    assert len(sets) == 6 and len({tuple(s) for s in sets}) == 6  # C(4, 2) distinct sets, none with excluded heads
    assert all((0, 0) not in s and (1, 1) not in s and len(s) == 2 for s in sets)
    assert random_sets(1, 3, 2, [(0, 0), (0, 1)], n_draws=1, seed=0) == []  # only 1 head outside: no contrast
