"""A seeded short training run per planted world: the mechanism forms (held-out accuracy, ground-truth heads whose
removal breaks the mechanism and spares the control) and the workbench's detector ranks those heads on top.

Small worlds so that each run takes about 15 s of CPU (training and check): 2 eras of 3 years (temporal); one context
statement (conflict) and one stored pair (retrieval), which the model copies by content, without the key matching
the shipped models learn (that takes thousands of steps: benchmarks/planted_mechanisms.py).
"""

import pytest

from workbench.toy.planted import check_detectors
from workbench.toy.run_folder import list_checkpoints
from workbench.toy.train import TrainConfig, train

MODEL = {"hidden_size": 32, "num_attention_heads": 4, "num_hidden_layers": 2}
RUNS = {
    "temporal": ({"steps": 400, "lr": 0.01, "model": {**MODEL, "vocab_size": 48, "intermediate_size": 64},
                  "data": {"kind": "temporal_facts", "n_entities": 8, "n_eras": 2, "years_per_era": 3,
                           "n_attributes": 8, "n_filler": 8, "body": 8}}, "patching"),
    "conflict": ({"steps": 500, "lr": 0.005, "model": {**MODEL, "vocab_size": 32, "intermediate_size": 64},
                  "data": {"kind": "conflict_facts", "n_entities": 16, "n_attributes": 8, "n_pairs": 1,
                           "n_queries": 2, "p_closed": 0.3, "p_context": 0.6}}, "attribution"),
    "retrieval": ({"steps": 500, "lr": 0.005, "model": {**MODEL, "vocab_size": 40},
                   "data": {"kind": "kv_retrieval", "n_keys": 8, "n_values": 16, "n_pairs": 1, "value_len": 1,
                            "n_queries": 1, "n_memorized": 2, "p_closed": 0.3}}, "retrieval"),
}


@pytest.mark.parametrize("name", list(RUNS))
def test_short_training_plants_a_mechanism_the_detector_finds(name, tmp_path):
    settings, detector = RUNS[name]
    config = TrainConfig.from_dict({"name": f"planted-{name}", "seed": 0, "batch_size": 32, "warmup_steps": 20,
                                    "n_checkpoints": 1, "eval_data": {"split": "test"},
                                    "scores": {"detectors": ["planted"], "lag_crp": False}, **settings})
    run = train(config, tmp_path / "run", device="cpu", score=False)
    import workbench as wb

    subject = wb.load(str(list_checkpoints(run)[-1][1]), device="cpu")
    check = check_detectors(subject, n_random=2, out=tmp_path / "detectors")  # the world comes from the run folder
    truth = check.truth
    mech, ctrl = truth.mechanism, truth.control
    assert check.accuracy[mech] >= 0.9 and check.accuracy[ctrl] >= 0.9  # held-out items
    assert len(truth.heads) >= 1
    assert truth.intact[mech] - truth.ablated[mech] >= 0.4  # zeroing the planted heads breaks the mechanism ...
    assert truth.intact[ctrl] - truth.ablated[ctrl] <= 0.3  # ... and spares the control
    row = check.table.set_index("detector").loc[detector]
    assert row["precision"] >= 0.75  # chance: len(truth.heads) / 8 (the ground truth is at most one layer here)
    assert row[f"drop_{mech}"] - row[f"drop_{ctrl}"] > 0.3  # what the detector picks is specific to the mechanism
