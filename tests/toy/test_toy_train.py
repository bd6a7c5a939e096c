"""Training toy models: log-schedule checkpoints, exact resume, per-checkpoint atlas tables, the CLI, figures,
and (seeded) the induction-head phase change of a 2-layer attention-only model."""

import json
import shutil

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from workbench.cli import main
from workbench.errors import InputError
from workbench.toy.run_folder import list_checkpoints
from workbench.toy.train import TrainConfig, checkpoint_steps, lr_at, train
from workbench.toy.trajectory import load_run, phase_change, summary
from workbench.viz.training import lag_crp_over_training, loss_curve, score_trajectories

TINY = {"name": "tiny", "steps": 6, "batch_size": 4, "eval_batch": 4, "n_checkpoints": 3, "warmup_steps": 2,
        "model": {"vocab_size": 24, "hidden_size": 16, "num_attention_heads": 2},
        "data": {"kind": "repeated", "seq_len": 8, "min_len": 3},
        "scores": {"detectors": ["previous_token", "induction", "sink"], "lag_crp": False,
                   "settings": {"seq_len": 8, "batch": 2, "sink_batch": 2, "sink_tokens": 12}}}


def test_checkpoint_schedule_and_learning_rate():
    steps = checkpoint_steps(1000, 10)
    assert steps[0] == 0 and steps[-1] == 1000 and steps == sorted(set(steps)) and len(steps) == 11
    assert np.allclose(np.diff(np.log(steps[1:])), np.log(1000) / 9, atol=0.2)  # log-spaced
    cfg = TrainConfig(steps=100, warmup_steps=10, lr=1e-3, schedule="cosine", min_lr_ratio=0.1)
    assert lr_at(cfg, 5) == pytest.approx(5e-4) and lr_at(cfg, 10) == pytest.approx(1e-3)
    assert lr_at(cfg, 100) == pytest.approx(1e-4) and lr_at(cfg, 55) == pytest.approx(5.5e-4)


def test_resume_continues_exactly(tmp_path):
    config = TrainConfig.from_dict(TINY)
    train(config, tmp_path / "a", score=False)
    assert [s for s, _ in list_checkpoints(tmp_path / "a")] == [0, 1, 2, 6]
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    shutil.rmtree(tmp_path / "b" / "checkpoints" / "step-0000006")  # as if killed after step 2's checkpoint
    train(config, tmp_path / "b", score=False)
    wa = load_file(str(tmp_path / "a/checkpoints/step-0000006/model.safetensors"))
    wb_ = load_file(str(tmp_path / "b/checkpoints/step-0000006/model.safetensors"))
    assert all(torch.equal(wa[k], wb_[k]) for k in wa)
    log = pd.read_parquet(tmp_path / "b/log.parquet")
    assert log["step"].tolist() == [1, 2, 3, 4, 5, 6]
    assert {"loss", "loss_first", "loss_repeat", "tokens", "lr"} <= set(log.columns)
    with pytest.raises(InputError, match="different config"):
        train(TrainConfig.from_dict({**TINY, "lr": 0.5}), tmp_path / "a", score=False)


def test_cli_train_then_trajectory(tmp_path, capsys):
    cfg = {**TINY, "scores": {**TINY["scores"], "lag_crp": True, "lag_seq_len": 10, "lag_batch": 2,
                              "max_lag": 6}}
    path = tmp_path / "cfg.json"
    path.write_text(json.dumps(cfg))
    assert main(["train", "--config", str(path), "--out", str(tmp_path / "run")]) == 0
    assert "4 checkpoints scored" in capsys.readouterr().out
    assert main(["trajectory", str(tmp_path / "run")]) == 0
    assert (tmp_path / "run" / "trajectory.html").stat().st_size > 100_000
    run = load_run(tmp_path / "run")
    assert run.steps == [0, 1, 2, 6] and len(run.atlas) == 4 * 2 * 2
    assert {"induction", "previous_token", "sink_rate", "cmr_distance"} <= set(run.score_columns)
    assert run.scores("induction").shape == (4, 4)
    assert set(run.lag["lag"]) == set(range(-6, 6)) and len(run.lag) == 4 * 4 * 12
    # figures: one trace per head, one heatmap row per checkpoint
    assert len(score_trajectories(run.atlas, "induction").data) == 4
    assert len(lag_crp_over_training(run.lag, 1, 0).data[0].y) == 4
    assert len(loss_curve(run.log, evals=run.evals).data) == 6  # 3 train losses + their held-out markers
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({**TINY, "model": {"positional": "alibi"}}))
    assert main(["train", "--config", str(bad), "--out", str(tmp_path / "x")]) == 2
    assert "positional='alibi'" in capsys.readouterr().err


def test_phase_change_detection():
    steps = np.arange(1, 1001)
    drop = 4.0 - 3.5 / (1 + np.exp(-(steps - 400) / 15))
    noisy = drop + np.random.default_rng(0).normal(0, 0.05, len(steps))
    found = phase_change(pd.DataFrame({"step": steps, "loss_repeat": noisy}))
    assert abs(found["step"] - 400) <= 10 and found["drop"] == pytest.approx(3.5, abs=0.1)
    assert phase_change(pd.DataFrame({"step": steps, "loss_repeat": 4 + 0 * noisy})) is None


@pytest.mark.slow
def test_two_layer_attention_only_model_shows_the_induction_phase_change(tmp_path):
    """Seeded: the repeat loss falls from ~log(64) to < 1 nat in a sharp drop and a layer-1 head becomes an
    induction head (0.02 -> > 0.7) alongside a layer-0 previous-token head."""
    config = TrainConfig.from_dict({
        "name": "phase", "seed": 0, "steps": 300, "batch_size": 32, "lr": 3e-3, "warmup_steps": 50,
        "n_checkpoints": 4, "eval_batch": 32,
        "model": {"vocab_size": 68, "hidden_size": 64, "num_attention_heads": 4},
        "data": {"kind": "repeated", "seq_len": 32, "min_len": 8},
        "scores": {"detectors": ["previous_token", "induction"], "lag_crp": False,
                   "settings": {"seq_len": 32, "batch": 8}}})
    run = load_run(train(config, tmp_path, device="cpu"))
    phase = phase_change(run.log)
    assert phase is not None and 100 <= phase["step"] <= 280, phase
    assert phase["early"] > 3.6 and phase["final"] < 1.0
    induction = run.scores("induction")
    assert induction.loc[0].max() < 0.1 and induction.loc[300].max() > 0.7
    info = summary(run)
    top = info["top"]["induction"][0]
    assert top["head"].startswith("L1") and top["onset_step"] > 0
    assert info["top"]["previous_token"][0]["head"].startswith("L0")
    assert info["top"]["previous_token"][0]["value"] > 0.5
