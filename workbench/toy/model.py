"""Small decoder-only transformers as HF models (``ToyForCausalLM``), hookable like any other Subject.

Layout follows the Llama naming that the workbench and TransformerLens read: ``model.embed_tokens``,
``model.embed_positions`` (learned positions only), ``model.layers[i].{input_layernorm, self_attn.{q,k,v,o}_proj,
post_attention_layernorm, mlp.{gate,up,down}_proj}`` (no MLP in attention-only models), ``model.norm``, ``lm_head``.
Attention goes through transformers' ``ALL_ATTENTION_FUNCTIONS`` dispatch, so ``attn_implementation="workbench"``
(the workbench's one hook point) observes and edits every head. Sigmoid-attention layers declare
``attention_activation = "sigmoid"``, which the hook point reads.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from transformers import GenerationMixin, PreTrainedModel
from transformers.activations import ACT2FN
from transformers.cache_utils import Cache, DynamicCache
from transformers.masking_utils import create_causal_mask
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from ..models.attention import IMPLEMENTATION, causal_visibility
from .config import ToyConfig


class ToyRMSNorm(nn.Module):
    """RMSNorm: x / sqrt(mean(x^2) + eps) * weight (Zhang & Sennrich 2019), computed in float32."""

    def __init__(self, size: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * h.to(x.dtype)


class ToyRotaryEmbedding(nn.Module):
    """RoPE (Su et al. 2021), rotate-half convention: returns (cos, sin) of shape (B, N, head_dim) for position_ids."""

    def __init__(self, config: ToyConfig):
        super().__init__()
        self.head_dim = config.head_dim
        self.theta = float(config.rope_parameters["rope_theta"])

    @torch.no_grad()
    def forward(self, x: torch.Tensor, position_ids: torch.Tensor):
        inv_freq = 1.0 / self.theta ** (torch.arange(0, self.head_dim, 2, device=x.device, dtype=torch.float32)
                                        / self.head_dim)
        freqs = position_ids[..., None].float() * inv_freq
        emb = torch.cat((freqs, freqs), dim=-1)
        return emb.cos().to(x.dtype), emb.sin().to(x.dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def apply_rope(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor):
    """Rotate q (B, H, N, D) and k (B, Hkv, N, D) by the positions' angles."""
    cos, sin = cos[:, None], sin[:, None]
    return q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin


def eager_toy_attention(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None, **kwargs):
    """Plain attention with the module's activation: softmax over visible keys, or elementwise sigmoid(score + bias)."""
    scaling = query.shape[-1] ** -0.5 if scaling is None else scaling
    group = query.shape[1] // key.shape[1]
    key, value = key.repeat_interleave(group, dim=1), value.repeat_interleave(group, dim=1)
    scores = torch.matmul(query, key.transpose(-1, -2)) * scaling
    if attention_mask is None:
        visible = causal_visibility(query.shape[2], key.shape[2], None, query.device)
    elif attention_mask.dtype == torch.bool:
        visible = attention_mask
    else:
        visible = attention_mask > torch.finfo(attention_mask.dtype).min / 2
    scores = scores.masked_fill(~visible, -math.inf)
    if getattr(module, "attention_activation", "softmax") == "sigmoid":
        weights = torch.sigmoid(scores + module.attention_bias)
    else:
        weights = torch.softmax(scores.float(), dim=-1).nan_to_num(0.0).to(query.dtype)
    weights = nn.functional.dropout(weights, p=dropout, training=module.training)
    return torch.matmul(weights, value).transpose(1, 2).contiguous(), weights


class ToyAttention(nn.Module):
    """Multi-head (optionally grouped-query) causal self-attention, dispatched through ALL_ATTENTION_FUNCTIONS."""

    def __init__(self, config: ToyConfig, layer_idx: int):
        super().__init__()
        self.config = config
        self.layer_idx = layer_idx
        self.head_dim = config.head_dim
        self.num_key_value_groups = config.num_attention_heads // config.num_key_value_heads
        self.scaling = self.head_dim ** -0.5
        self.is_causal = True
        self.attention_activation = config.attention_activation
        self.attention_bias = config.sigmoid_bias  # read by the hook point for sigmoid attention
        d, h, hkv = config.hidden_size, config.num_attention_heads, config.num_key_value_heads
        self.q_proj = nn.Linear(d, h * self.head_dim, bias=False)
        self.k_proj = nn.Linear(d, hkv * self.head_dim, bias=False)
        self.v_proj = nn.Linear(d, hkv * self.head_dim, bias=False)
        self.o_proj = nn.Linear(h * self.head_dim, d, bias=False)

    def _interface(self):
        """The registered attention function; eager for "eager", and for sigmoid layers outside the workbench one."""
        impl = self.config._attn_implementation
        if impl == "eager" or (self.attention_activation != "softmax" and impl != IMPLEMENTATION):
            return eager_toy_attention
        return ALL_ATTENTION_FUNCTIONS.get_interface(impl, eager_toy_attention)

    def forward(self, hidden_states, position_embeddings=None, attention_mask=None, past_key_values=None, **kwargs):
        shape = (*hidden_states.shape[:-1], -1, self.head_dim)
        q = self.q_proj(hidden_states).view(shape).transpose(1, 2)
        k = self.k_proj(hidden_states).view(shape).transpose(1, 2)
        v = self.v_proj(hidden_states).view(shape).transpose(1, 2)
        if position_embeddings is not None:
            q, k = apply_rope(q, k, *position_embeddings)
        if past_key_values is not None:
            k, v = past_key_values.update(k, v, self.layer_idx)
        z, weights = self._interface()(self, q, k, v, attention_mask, scaling=self.scaling,
                                       dropout=0.0, **kwargs)
        return self.o_proj(z.reshape(*hidden_states.shape[:-1], -1).contiguous()), weights


class ToyMLP(nn.Module):
    """Gated MLP: down(act(gate(x)) * up(x)) (Shazeer 2020, as in Llama)."""

    def __init__(self, config: ToyConfig):
        super().__init__()
        self.gate_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)
        self.act_fn = ACT2FN[config.hidden_act]

    def forward(self, x):
        return self.down_proj(self.act_fn(self.gate_proj(x)) * self.up_proj(x))


class ToyDecoderLayer(nn.Module):
    """Pre-norm block: x + attn(norm(x)), then x + mlp(norm(x)) unless attention-only."""

    def __init__(self, config: ToyConfig, layer_idx: int):
        super().__init__()
        self.input_layernorm = ToyRMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = ToyAttention(config, layer_idx)
        if not config.attn_only:
            self.post_attention_layernorm = ToyRMSNorm(config.hidden_size, config.rms_norm_eps)
            self.mlp = ToyMLP(config)

    def forward(self, hidden_states, attention_mask=None, position_embeddings=None, past_key_values=None, **kwargs):
        attn, _ = self.self_attn(self.input_layernorm(hidden_states), position_embeddings=position_embeddings,
                                 attention_mask=attention_mask, past_key_values=past_key_values, **kwargs)
        hidden_states = hidden_states + attn
        if hasattr(self, "mlp"):
            hidden_states = hidden_states + self.mlp(self.post_attention_layernorm(hidden_states))
        return hidden_states


class ToyPreTrainedModel(PreTrainedModel):
    config_class = ToyConfig
    config: ToyConfig
    base_model_prefix = "model"
    _no_split_modules = ["ToyDecoderLayer"]
    _skip_keys_device_placement = ["past_key_values"]
    _supports_sdpa = True
    _supports_flex_attn = False
    _supports_attention_backend = True


class ToyModel(ToyPreTrainedModel):
    """The decoder stack: embeddings (+ learned positions or RoPE), layers, final RMSNorm."""

    def __init__(self, config: ToyConfig):
        super().__init__(config)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        if config.positional == "learned":
            self.embed_positions = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        else:
            self.rotary_emb = ToyRotaryEmbedding(config)
        self.layers = nn.ModuleList([ToyDecoderLayer(config, i) for i in range(config.num_hidden_layers)])
        self.norm = ToyRMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_init()

    def get_input_embeddings(self):
        return self.embed_tokens

    def set_input_embeddings(self, value):
        self.embed_tokens = value

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, past_key_values: Cache | None = None,
                inputs_embeds=None, use_cache: bool | None = None, **kwargs) -> BaseModelOutputWithPast:
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("give exactly one of input_ids or inputs_embeds")
        if inputs_embeds is None:
            inputs_embeds = self.embed_tokens(input_ids)
        use_cache = self.config.use_cache if use_cache is None else use_cache
        if use_cache and past_key_values is None:
            past_key_values = DynamicCache(config=self.config)
        if position_ids is None:
            seen = past_key_values.get_seq_length() if past_key_values is not None else 0
            position_ids = (torch.arange(inputs_embeds.shape[1], device=inputs_embeds.device) + seen)[None]
        mask = create_causal_mask(config=self.config, inputs_embeds=inputs_embeds, attention_mask=attention_mask,
                                  past_key_values=past_key_values, position_ids=position_ids)
        hidden = inputs_embeds
        position_embeddings = None
        if self.config.positional == "learned":
            if int(position_ids.max()) >= self.config.max_position_embeddings:
                raise ValueError(f"position {int(position_ids.max())} is beyond the "
                                 f"{self.config.max_position_embeddings} learned positions")
            hidden = hidden + self.embed_positions(position_ids)
        else:
            position_embeddings = self.rotary_emb(hidden, position_ids)
        for layer in self.layers:
            hidden = layer(hidden, attention_mask=mask, position_embeddings=position_embeddings,
                           past_key_values=past_key_values, **kwargs)
        return BaseModelOutputWithPast(last_hidden_state=self.norm(hidden),
                                       past_key_values=past_key_values if use_cache else None)


class ToyForCausalLM(ToyPreTrainedModel, GenerationMixin):
    """A ToyModel with an untied unembedding ``lm_head``; loss = next-token cross-entropy (labels shifted inside)."""

    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}

    def __init__(self, config: ToyConfig):
        super().__init__(config)
        self.model = ToyModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def get_output_embeddings(self):
        return self.lm_head

    def set_output_embeddings(self, value):
        self.lm_head = value

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, past_key_values=None, inputs_embeds=None,
                labels=None, use_cache=None, logits_to_keep: int | torch.Tensor = 0, **kwargs) -> CausalLMOutputWithPast:
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                         past_key_values=past_key_values, inputs_embeds=inputs_embeds, use_cache=use_cache, **kwargs)
        keep = slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) else logits_to_keep  # HF convention
        logits = self.lm_head(out.last_hidden_state[:, keep])
        loss = None
        if labels is not None:
            loss = self.loss_function(logits=logits, labels=labels, vocab_size=self.config.vocab_size, **kwargs)
        return CausalLMOutputWithPast(loss=loss, logits=logits, past_key_values=out.past_key_values)
