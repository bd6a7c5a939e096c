"""``workbench models --check FOLDER``: supported or not, and every feature tried on a probe."""

from __future__ import annotations

import torch
import transformers as T

from tests.architectures.cases import CASES, VOCAB, gptj_config, randomise
from tests.conftest import tiny_tokenizer
from workbench import model_check
from workbench.cli import main


def _folder(config, path):
    torch.manual_seed(0)
    randomise(T.AutoModelForCausalLM.from_config(config)).save_pretrained(path)
    tiny_tokenizer(VOCAB).save_pretrained(path)
    return str(path)


def test_check_reports_every_feature_of_a_supported_model(capsys, tmp_path):
    gemma2 = next(c for c in CASES if c.name == "gemma2")
    assert main(["models", "--check", _folder(gemma2.config, tmp_path / "gemma2")]) == 0
    out = capsys.readouterr().out
    assert "supported: yes" in out and "attention softcap 2.0" in out and "1 sliding-window (window 4)" in out
    for name, _ in model_check.FEATURES:
        line = next(line for line in out.splitlines() if name in line)
        assert line.split()[0] == "ok", line


def test_check_says_why_a_model_is_not_supported(capsys, tmp_path):
    assert main(["models", "--check", _folder(gptj_config(), tmp_path / "gptj")]) == 1
    out = capsys.readouterr().out
    assert "supported: no" in out and "AttentionInterface" in out and "GPT-NeoX" in out


def test_a_failing_feature_is_reported_and_the_others_still_run(monkeypatch, tmp_path):
    def broken(subject, ids):
        raise RuntimeError("boom")

    monkeypatch.setattr(model_check, "FEATURES", (("broken", broken),) + model_check.FEATURES[:2])
    llama = next(c for c in CASES if c.name == "llama")
    result = model_check.check_model(_folder(llama.config, tmp_path / "llama"), device="cpu")
    assert result.supported and result.failed == ["broken"]
    assert [f.ok for f in result.features] == [False, True, True]
    assert "RuntimeError: boom" in result.features[0].detail
