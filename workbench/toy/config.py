"""``ToyConfig``: the hyper-parameters of the workbench's small decoder-only transformers (an HF config)."""

from __future__ import annotations

from transformers import PreTrainedConfig

from ..errors import InputError

MODEL_TYPE = "workbench-toy"
POSITIONAL = ("rope", "learned")
ACTIVATIONS = ("softmax", "sigmoid")


class ToyConfig(PreTrainedConfig):
    """A pre-norm decoder-only transformer: 1-4 layers, attention-only or with a gated MLP, RoPE or learned positions.

    ``attention_activation="sigmoid"`` replaces softmax with elementwise sigmoid of the scaled scores plus
    ``sigmoid_bias`` and no normalisation over keys (Gu et al. 2024, "When Attention Sink Emerges", section 7: no
    attention sink forms; Ramapuram et al. 2024 recommend the bias -log(sequence length) for stable training).
    ``intermediate_size=0`` (the default) builds an attention-only model (Olsson et al. 2022's toy models).
    """

    model_type = MODEL_TYPE
    keys_to_ignore_at_inference = ["past_key_values"]

    vocab_size: int = 512
    hidden_size: int = 128
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    num_key_value_heads: int | None = None
    head_dim: int | None = None
    intermediate_size: int = 0
    hidden_act: str = "silu"
    positional: str = "rope"
    rope_parameters: dict | None = None  # RoPE: {"rope_type": "default", "rope_theta": 10000.0}; None = learned
    attention_activation: str = "softmax"
    sigmoid_bias: float = 0.0  # constant added to sigmoid-attention scores (Ramapuram et al. 2024: -log(length))
    max_position_embeddings: int = 256
    rms_norm_eps: float = 1e-6
    initializer_range: float = 0.02
    use_cache: bool = True
    tie_word_embeddings: bool = False
    pad_token_id: int | None = 0
    bos_token_id: int | None = 1
    eos_token_id: int | None = 2

    def __post_init__(self, **kwargs):
        if self.head_dim is None:
            self.head_dim = self.hidden_size // max(self.num_attention_heads, 1)
        if self.num_key_value_heads is None:
            self.num_key_value_heads = self.num_attention_heads
        if self.positional == "rope" and not self.rope_parameters:
            self.rope_parameters = {"rope_type": "default", "rope_theta": 10000.0}
        super().__post_init__(**kwargs)
        if self.positional == "learned":
            self.rope_parameters = None  # Subject reads the positional scheme from rope_parameters
        self.check()

    @property
    def attn_only(self) -> bool:
        """True for attention-only models (no MLP sublayers)."""
        return not self.intermediate_size

    def check(self) -> None:
        """Raise InputError naming the bad field and its allowed values."""
        problems = []
        if not 1 <= self.num_hidden_layers <= 8:
            problems.append(f"num_hidden_layers={self.num_hidden_layers} (use 1..8)")
        if self.num_attention_heads < 1 or self.num_key_value_heads < 1 \
                or self.num_attention_heads % self.num_key_value_heads:
            problems.append(f"num_attention_heads={self.num_attention_heads}, num_key_value_heads="
                            f"{self.num_key_value_heads} (both >= 1; the KV heads must divide the query heads)")
        if self.head_dim < 2 or self.head_dim % 2:
            problems.append(f"head_dim={self.head_dim} (an even number >= 2)")
        if self.positional not in POSITIONAL:
            problems.append(f"positional={self.positional!r} (one of {', '.join(POSITIONAL)})")
        if self.positional == "rope" and (self.rope_parameters or {}).get("rope_type", "default") != "default":
            problems.append(f"rope_parameters={self.rope_parameters} (toy models use plain RoPE: rope_type default)")
        if self.attention_activation not in ACTIVATIONS:
            problems.append(f"attention_activation={self.attention_activation!r} (one of {', '.join(ACTIVATIONS)})")
        if self.intermediate_size < 0 or self.vocab_size < 8 or self.hidden_size < 2 or self.max_position_embeddings < 2:
            problems.append("intermediate_size >= 0, vocab_size >= 8, hidden_size >= 2 and max_position_embeddings >= 2")
        if problems:
            raise InputError("bad toy model config: " + "; ".join(problems))
