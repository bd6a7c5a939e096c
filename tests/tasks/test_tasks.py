"""Task builders (targets in the right places, honest filtering) and per-prompt metrics against hand computations."""

import json

import numpy as np
import pytest
import torch

from workbench.errors import InputError
from workbench.tasks import (METRICS, TaskBatch, answer_batch, build_task, gather_targets, get_metric, induction_batch,
                             knowledge_conflict_task, known, metric_values, read_jsonl, temporal_task)
from workbench.tasks.base import DATA


def test_metrics_match_hand_computations():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 2, 7, generator=g, dtype=torch.float64)
    tid = torch.tensor([[1, 2], [3, 3], [0, 6]])
    mask = torch.tensor([[True, True], [True, False], [True, True]])
    batch = TaskBatch(torch.zeros(3, 4, dtype=torch.long), torch.ones(3, 4, dtype=torch.long), torch.zeros(3, 2, dtype=torch.long),
                      tid, mask, foil_ids=torch.tensor([4, 5, 2]))
    lp = torch.log_softmax(logits, -1)
    for b in range(3):
        picked = [float(lp[b, t, tid[b, t]]) for t in range(2) if mask[b, t]]
        assert METRICS["loss"](logits, batch)[b] == pytest.approx(-np.mean(picked))
        assert METRICS["answer_logprob"](logits, batch)[b] == pytest.approx(np.sum(picked))
        assert METRICS["answer_prob"](logits, batch)[b] == pytest.approx(float(lp[b, 0, tid[b, 0]].exp()))
        hits = [int(logits[b, t].argmax()) == int(tid[b, t]) for t in range(2) if mask[b, t]]
        assert METRICS["accuracy"](logits, batch)[b] == pytest.approx(np.mean(hits))
        assert METRICS["exact_match"](logits, batch)[b] == float(all(hits))
        assert METRICS["logit_diff"](logits, batch)[b] == pytest.approx(float(logits[b, 0, tid[b, 0]] - logits[b, 0, batch.foil_ids[b]]))
    custom = get_metric(lambda lg, bt: lg[:, 0, 0])
    assert custom.name == "<lambda>" and torch.equal(custom(logits, batch), logits[:, 0, 0])
    with pytest.raises(InputError, match="foil"):
        METRICS["logit_diff"](logits, TaskBatch(batch.input_ids, batch.attention_mask, batch.target_pos, tid, mask))
    with pytest.raises(InputError, match="unknown metric"):
        get_metric("nope")


def test_answer_batch_teacher_forces_the_answer(llama):
    batch = answer_batch(llama, ["w5 w6 w7", "w9"], [" w10 w11", " w12"], foils=[" w20", " w21"])
    assert batch.input_ids[0].tolist()[:5] == llama.encode("w5 w6 w7 w10").tolist()
    n = len(llama.encode("w5 w6 w7"))
    assert batch.target_pos[0].tolist() == [n - 1, n] and batch.target_ids[0].tolist() == llama.encode("w10 w11", prepend_bos=False).tolist()
    assert batch.target_mask.tolist() == [[True, True], [True, False]]
    assert batch.attention_mask[1].sum() == len(llama.encode("w9"))  # right-padded
    full = llama.logits(batch.input_ids)
    target = gather_targets(full, batch)
    assert torch.equal(target[0, 1], full[0, n])
    kept = batch.keep_positions()
    assert torch.equal(gather_targets(full[:, kept], batch, kept), target)
    with pytest.raises(InputError, match="different first tokens"):
        answer_batch(llama, ["w5"], [" w7 w8"], foils=[" w7"])


def test_induction_targets_are_the_repeated_tokens(llama):
    batch = induction_batch(llama, n_prompts=3, seq_len=10, seed=1)
    ids = batch.input_ids
    assert ids.shape == (3, 21) and batch.target_pos[0].tolist() == list(range(11, 20))
    for b in range(3):
        for pos, tgt in zip(batch.target_pos[b], batch.target_ids[b]):
            assert ids[b, pos + 1] == tgt == ids[b, pos + 1 - 10]


def test_filters_keep_only_known_items(tmp_path, llama):
    records = [{"prompt": "w5 w6", "answer": " w7", "counterfactual": " w8", "context": "w5 w6 w8."},
               {"prompt": "w9", "answer": " w10", "counterfactual": " w10 w3", "context": "w9 w10"},
               {"prompt": "w11", "answer": " w12", "counterfactual": " w13", "context": "w11 w13"}]
    path = tmp_path / "kc.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in records))
    every = knowledge_conflict_task(llama, path, filter=False)
    assert every.n_total == 3 and every.n_kept == 2  # the second shares its first token with its counterfactual
    assert every.batch.items[1]["prompt"] == "w11"
    ok = known(llama, ["w5 w6", "w11"], [" w7", " w12"])
    if ok.any():
        task = knowledge_conflict_task(llama, path)
        assert [r["prompt"] for r in task.batch.items] == [p for p, k in zip(["w5 w6", "w11"], ok) if k]
    else:
        with pytest.raises(InputError, match="none of the 3 items"):
            knowledge_conflict_task(llama, path)
    with pytest.raises(InputError, match="does not exist"):
        read_jsonl(tmp_path / "missing.jsonl")
    with pytest.raises(InputError, match="unknown task"):
        build_task(llama, "nope")


def test_shipped_task_data_is_well_formed():
    for name, fields in (("knowledge_conflict", {"prompt", "answer", "counterfactual", "context", "relation"}),
                         ("temporal", {"prompt", "answer", "kind", "time", "relation"})):
        records = read_jsonl(DATA / f"{name}.jsonl")
        assert records and all(fields <= set(r) for r in records)
        assert all(r["answer"].startswith(" ") for r in records)
    conflict = read_jsonl(DATA / "knowledge_conflict.jsonl")
    assert all(r["answer"] != r["counterfactual"] and r["counterfactual"].strip() in r["context"] for r in conflict)
    temporal = read_jsonl(DATA / "temporal.jsonl")
    assert {r["kind"] for r in temporal} == {"temporal", "invariant"}
    assert all((r["time"] is None) == (r["kind"] == "invariant") for r in temporal)


@pytest.mark.model
def test_default_model_task_counts(smollm2):
    """The counts the report quotes: what smollm2-135m knows closed-book, and how it resolves the conflict."""
    conflict = knowledge_conflict_task(smollm2)
    assert (conflict.n_total, conflict.n_kept) == (64, 43)
    diff = metric_values(smollm2, conflict.batch, [METRICS["logit_diff"]])["logit_diff"]
    assert (diff > 0).sum() == 41  # memory beats the counterfactual context on 41 of 43
    assert temporal_task(smollm2).n_kept == 6
    assert temporal_task(smollm2, kind="invariant").n_kept == 8
