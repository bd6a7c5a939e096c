"""Shared fixtures: tiny random Llama / Gemma3 models with an in-memory tokenizer, and the default model."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("WORKBENCH_PROGRESS", "0")
# Without a GPU the Triton kernels run in Triton's CPU interpreter. TRITON_INTERPRET must be set before
# workbench.kernels.triton_stats is first imported (Triton reads it when it decorates the kernels), and any
# test module may import it first, so it is set here, before every test module.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

SHARED = Path(os.environ.get("WORKBENCH_SHARED", Path(__file__).resolve().parents[1] / ".." / "shared")).resolve()


def tiny_tokenizer(vocab_size: int = 96):
    """A word-level tokenizer over 'w0'..'wN' with BOS/EOS/PAD, built in memory and saved to a temp folder
    (TransformerLens's bridge reloads tokenizers from their ``name_or_path``)."""
    import tempfile

    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    folder = Path(tempfile.gettempdir()) / f"workbench-tiny-tokenizer-{vocab_size}"
    if not (folder / "tokenizer.json").is_file():
        vocab = {"<pad>": 0, "<bos>": 1, "<eos>": 2, "<unk>": 3}
        vocab.update({f"w{i}": i + 4 for i in range(vocab_size - 4)})
        tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
        tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
        PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>",
                                unk_token="<unk>").save_pretrained(folder)
    return AutoTokenizer.from_pretrained(folder)


def tiny_llama(seed: int = 0, n_layers: int = 2, n_heads: int = 4, n_kv: int = 2, vocab: int = 96, d_head: int = 8):
    """A random Llama (GQA) Subject small enough for unit tests."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from workbench.models import from_model

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=n_heads * d_head, intermediate_size=64, num_hidden_layers=n_layers,
                      num_attention_heads=n_heads, num_key_value_heads=n_kv, max_position_embeddings=512,
                      bos_token_id=1, eos_token_id=2, pad_token_id=0)
    return from_model(LlamaForCausalLM(cfg).eval(), tiny_tokenizer(vocab), name="tiny-llama")


def tiny_gemma3(seed: int = 0, window: int = 4, vocab: int = 96):
    """A random Gemma3 Subject with sliding-window (local) and global layers."""
    from transformers import Gemma3TextConfig, Gemma3ForCausalLM

    from workbench.models import from_model

    torch.manual_seed(seed)
    cfg = Gemma3TextConfig(vocab_size=vocab, hidden_size=48, intermediate_size=64, num_hidden_layers=3,
                           num_attention_heads=3, num_key_value_heads=1, head_dim=16, sliding_window=window,
                           layer_types=["sliding_attention", "sliding_attention", "full_attention"],
                           max_position_embeddings=512, query_pre_attn_scalar=16,
                           bos_token_id=1, eos_token_id=2, pad_token_id=0)
    return from_model(Gemma3ForCausalLM(cfg).eval(), tiny_tokenizer(vocab), name="tiny-gemma3")


@pytest.fixture
def llama():
    return tiny_llama()


@pytest.fixture
def gemma3():
    return tiny_gemma3()


@pytest.fixture(scope="session")
def smollm2():
    """The default pretrained model (fetched and converted into the cache on first use)."""
    import workbench as wb

    return wb.load("smollm2-135m", device="cpu")


@pytest.fixture(scope="session")
def shared_data() -> Path:
    path = SHARED / "data"
    if not path.is_dir():
        pytest.skip(f"shared data folder {path} not present (set WORKBENCH_SHARED)")
    return path


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    """A tiny random Llama saved as an HF folder (for commands that take --model PATH)."""
    folder = tmp_path_factory.mktemp("models") / "tiny"
    s = tiny_llama(seed=2)
    s.model.save_pretrained(folder)
    s.tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def byte_model(tmp_path_factory):
    """A tiny random Llama whose tokenizer has one token per byte (any English text), saved as an HF folder."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<bos>": 1, "<eos>": 2}
    for ch in sorted(pre_tokenizers.ByteLevel.alphabet()):
        vocab[ch] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>")
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                      bos_token_id=1, eos_token_id=2, pad_token_id=0)
    folder = tmp_path_factory.mktemp("models") / "tiny-bytes"
    LlamaForCausalLM(cfg).eval().save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
