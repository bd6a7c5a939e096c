"""Tiny random models of every architecture the workbench supports, and the test's own table of where their
parts are (written here by hand from the transformers sources, independent of workbench.models.architecture).

Weights are redrawn larger than the HF initialisation (std 0.15; norm gains and biases perturbed) so that
attention is peaked, soft-capping bites and norm gains/biases matter: a test that ignored any of them fails.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import transformers as T

VOCAB = 96
COMMON = dict(vocab_size=VOCAB, bos_token_id=1, eos_token_id=2, pad_token_id=0)
SIZES = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
             max_position_embeddings=64)
WINDOW = 4  # sliding window of the local layers; the test sequences are longer


@dataclass(frozen=True)
class Case:
    name: str
    model_type: str
    config: object
    layer: str  # decoder layer i, "{i}" filled in
    out_proj: str  # child of the layer: the output projection (its input is z (B, N, H*D))
    query: str  # child of the layer whose output holds the queries (a per-head q_norm maps 0 to 0: q_proj)
    query_layout: str  # "blocked" or "per_head_qkv" (GPT-NeoX: (q, k, v) per head)
    final_norm: str  # path from the model
    norm: str  # "layer" | "rms" | "rms1p" (Gemma's (1 + w))
    post_norm: str | None = None  # child of the layer applied to the attention output (sandwich norms)
    post_kind: str | None = None


def _llama_like(cls, **extra):
    return cls(**SIZES, num_key_value_heads=2, **COMMON, **extra)


CASES = [
    Case("gpt2", "gpt2", T.GPT2Config(n_embd=32, n_layer=2, n_head=4, n_positions=64,
                                      scale_attn_by_inverse_layer_idx=True, **COMMON),
         "transformer.h.{i}", "attn.c_proj", "attn.c_attn", "blocked", "transformer.ln_f", "layer"),
    Case("gpt_neox", "gpt_neox", T.GPTNeoXConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                                 intermediate_size=64, max_position_embeddings=64, rotary_pct=0.25,
                                                 **COMMON),
         "gpt_neox.layers.{i}", "attention.dense", "attention.query_key_value", "per_head_qkv",
         "gpt_neox.final_layer_norm", "layer"),
    Case("opt", "opt", T.OPTConfig(hidden_size=32, num_hidden_layers=2, ffn_dim=64, num_attention_heads=4,
                                   max_position_embeddings=64, word_embed_proj_dim=32, **COMMON),
         "model.decoder.layers.{i}", "self_attn.out_proj", "self_attn.q_proj", "blocked",
         "model.decoder.final_layer_norm", "layer"),
    Case("llama", "llama", _llama_like(T.LlamaConfig),
         "model.layers.{i}", "self_attn.o_proj", "self_attn.q_proj", "blocked", "model.norm", "rms"),
    Case("mistral", "mistral", _llama_like(T.MistralConfig, sliding_window=WINDOW),
         "model.layers.{i}", "self_attn.o_proj", "self_attn.q_proj", "blocked", "model.norm", "rms"),
    Case("qwen2", "qwen2", _llama_like(T.Qwen2Config),
         "model.layers.{i}", "self_attn.o_proj", "self_attn.q_proj", "blocked", "model.norm", "rms"),
    Case("qwen3", "qwen3", _llama_like(T.Qwen3Config, head_dim=8),
         "model.layers.{i}", "self_attn.o_proj", "self_attn.q_proj", "blocked", "model.norm", "rms"),
    Case("gemma2", "gemma2", _llama_like(T.Gemma2Config, head_dim=8, sliding_window=WINDOW, query_pre_attn_scalar=12,
                                         attn_logit_softcapping=2.0, final_logit_softcapping=3.0),
         "model.layers.{i}", "self_attn.o_proj", "self_attn.q_proj", "blocked", "model.norm", "rms1p",
         post_norm="post_attention_layernorm", post_kind="rms1p"),
    Case("gemma3", "gemma3_text", T.Gemma3TextConfig(**{**SIZES, "num_attention_heads": 4}, num_key_value_heads=1,
                                                     head_dim=8, sliding_window=WINDOW, query_pre_attn_scalar=12,
                                                     layer_types=["sliding_attention", "full_attention"], **COMMON),
         "model.layers.{i}", "self_attn.o_proj", "self_attn.q_proj", "blocked", "model.norm", "rms1p",
         post_norm="post_attention_layernorm", post_kind="rms1p"),
    Case("phi3", "phi3", _llama_like(T.Phi3Config, partial_rotary_factor=0.5),
         "model.layers.{i}", "self_attn.o_proj", "self_attn.qkv_proj", "blocked", "model.norm", "rms"),
    Case("olmo2", "olmo2", _llama_like(T.Olmo2Config),
         "model.layers.{i}", "self_attn.o_proj", "self_attn.q_norm", "blocked", "model.norm", "rms",
         post_norm="post_attention_layernorm", post_kind="rms"),
]


def gptj_config():
    """GPT-J computes attention in its own module (no AttentionInterface): the workbench must refuse it clearly."""
    return T.GPTJConfig(n_embd=32, n_layer=2, n_head=4, n_positions=64, rotary_dim=4, **COMMON)


@torch.no_grad()
def randomise(model, seed: int = 0):
    """Redraw every weight: matrices N(0, 0.15^2), vectors (norm gains, biases) their value + N(0, 0.15^2)."""
    g = torch.Generator().manual_seed(seed)
    for p in model.parameters():
        noise = torch.randn(p.shape, generator=g) * 0.15
        p.copy_(noise if p.ndim >= 2 else p + noise)
    return model


def module(model, path: str):
    node = model
    for part in path.split("."):
        node = node[int(part)] if part.isdigit() else getattr(node, part)
    return node


def head_slice(layout: str, head: int, d: int) -> slice:
    start = head * 3 * d if layout == "per_head_qkv" else head * d
    return slice(start, start + d)
