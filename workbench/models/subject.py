"""Subject: one loaded model with the facts every analysis needs, and TL / nnsight views on the same weights."""

from __future__ import annotations

import copy
import inspect
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ..errors import DamagedModelError, InputError, UnsupportedModelError
from . import attention
from .architecture import Architecture, Norm, check_class, check_config, describe, resolve


def default_device() -> torch.device:
    """CUDA when present, else CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


DEVICE_CHOICES = "cpu, cuda, cuda:N, mps or auto"


def resolve_device(device=None) -> torch.device:
    """A usable torch.device from None/"auto" (the GPU when present), "cpu", "cuda", "cuda:N" or "mps"; InputError
    for a misspelt device or one this machine does not have (checked before anything is loaded)."""
    if device is None or (isinstance(device, str) and device.strip().lower() == "auto"):
        return default_device()
    try:
        resolved = device if isinstance(device, torch.device) else torch.device(str(device).strip().lower())
    except (RuntimeError, ValueError, TypeError):
        raise InputError(f"unknown device {device!r}: use {DEVICE_CHOICES}") from None
    if resolved.type == "cpu":
        return resolved
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            why = "this torch has no CUDA support" if torch.version.cuda is None else "torch sees no GPU"
            raise InputError(f"device {device!r}: no CUDA GPU is available on this machine ({why}): use cpu")
        count = torch.cuda.device_count()
        if resolved.index is not None and resolved.index >= count:
            raise InputError(f"device {device!r}: this machine has {count} GPU(s), cuda:0..cuda:{count - 1}")
        return resolved
    if resolved.type == "mps":
        if not torch.backends.mps.is_available():
            raise InputError(f"device {device!r}: Apple's MPS is not available on this machine: use cpu")
        return resolved
    raise InputError(f"device {device!r} is not supported: use {DEVICE_CHOICES}")


@dataclass
class Subject:
    """A loaded causal LM (HF model + tokenizer) and its attention facts.

    Heads are (layer, head) in query-head numbering; ``kv_group[h]`` is the key/value head
    that query head ``h`` reads in grouped-query attention.
    """

    name: str
    model: torch.nn.Module
    tokenizer: object
    source: str = ""  # folder or hub id the weights came from
    weights_note: str = ""
    meta: dict = field(default_factory=dict)

    def __post_init__(self):
        self.model.eval()
        self.arch: Architecture = describe(self.model)
        arch = self.arch
        self.n_layers: int = arch.n_layers
        self.n_heads: int = arch.n_heads
        self.n_kv_heads: int = arch.n_kv_heads
        self.d_model: int = arch.d_model
        self.d_head: int = arch.d_head
        self.vocab_size: int = arch.vocab_size
        self.context_limit: int = arch.context_limit
        self.layer_types: list[str] = list(arch.layer_types)
        self.sliding_window: int | None = arch.sliding_window
        self.kv_group = np.arange(self.n_heads) // (self.n_heads // self.n_kv_heads)
        self.positional: str = arch.positional

    # ------------------------------------------------------------------ facts
    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    @property
    def local_layers(self) -> list[int]:
        """Layers with sliding-window (local) attention."""
        return [i for i, t in enumerate(self.layer_types) if t == "sliding"]

    @property
    def global_layers(self) -> list[int]:
        """Layers with full (global) causal attention."""
        return [i for i, t in enumerate(self.layer_types) if t == "full"]

    @property
    def n_total_heads(self) -> int:
        return self.n_layers * self.n_heads

    def facts(self) -> dict:
        """The model facts recorded in every Atlas's metadata."""
        return {
            "model": self.name, "source": self.source, "weights_note": self.weights_note,
            "n_layers": self.n_layers, "n_heads": self.n_heads, "n_kv_heads": self.n_kv_heads,
            "d_head": self.d_head, "d_model": self.d_model, "vocab_size": self.vocab_size,
            "context_limit": self.context_limit, "layer_types": self.layer_types,
            "sliding_window": self.sliding_window, "positional": self.positional,
            "architecture": type(self.model).__name__, "model_type": self.arch.model_type,
            "final_norm": self.arch.facts()["final_norm"], "attn_softcap": self.arch.attn_softcap, "device": str(self.device), "dtype": str(self.dtype).replace("torch.", ""),
        }

    def check_head(self, layer: int, head: int) -> None:
        """Raise InputError unless (layer, head) exists in this model."""
        if not (0 <= layer < self.n_layers and 0 <= head < self.n_heads):
            raise InputError(
                f"head L{layer}H{head} is out of range: {self.name} has layers 0..{self.n_layers - 1} "
                f"and heads 0..{self.n_heads - 1}"
            )

    def check_length(self, n_tokens: int) -> None:
        """Raise InputError for an empty context or one longer than the model's limit."""
        if n_tokens == 0:
            raise InputError("the prompt is empty: give at least one token of text")
        if n_tokens > self.context_limit:
            raise InputError(
                f"the context has {n_tokens} tokens but {self.name} takes at most {self.context_limit}: "
                "shorten the text or choose a model with a longer context"
            )

    def __repr__(self) -> str:
        return (f"Subject({self.name!r}: {self.n_layers} layers x {self.n_heads} heads "
                f"({self.n_kv_heads} KV), d_head {self.d_head}, ctx {self.context_limit}, {self.device}, {self.dtype})")

    # ------------------------------------------------------------- tokens
    @property
    def bos_token_id(self) -> int | None:
        """The tokenizer's BOS id (None when it has none, or for a Subject built without a tokenizer)."""
        return getattr(self.tokenizer, "bos_token_id", None)

    @cached_property
    def adds_bos(self) -> bool:
        """Whether the tokenizer prepends BOS by itself."""
        ids = self.tokenizer("a")["input_ids"]
        return self.bos_token_id is not None and len(ids) > 0 and ids[0] == self.bos_token_id

    def encode(self, text: str, prepend_bos: bool | None = None, max_tokens: int | None = None) -> torch.Tensor:
        """Token ids (1-D) of ``text``; BOS prepended if asked (default: as the tokenizer does); cut to the first
        ``max_tokens`` (BOS included) before the context-limit check when given (for callers that use only those)."""
        if not isinstance(text, str) or not text.strip():
            raise InputError("the prompt is empty: give at least one token of text")
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        if prepend_bos if prepend_bos is not None else self.adds_bos:
            if self.bos_token_id is None:
                raise InputError(f"{self.name}'s tokenizer has no BOS token: call with prepend_bos=False")
            ids = [self.bos_token_id] + ids
        if max_tokens is not None:
            ids = ids[:max_tokens]
        self.check_length(len(ids))
        return torch.tensor(ids, dtype=torch.long)

    def tokenize(self, texts: str | Sequence[str], prepend_bos: bool | None = None) -> dict[str, torch.Tensor]:
        """A padded batch (right padding): ``input_ids`` and ``attention_mask`` (1 = real token)."""
        texts = [texts] if isinstance(texts, str) else list(texts)
        if not texts:
            raise InputError("no prompts given: pass at least one string")
        rows = [self.encode(t, prepend_bos) for t in texts]
        width = max(len(r) for r in rows)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        ids = torch.full((len(rows), width), pad, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, : len(r)] = r
            mask[i, : len(r)] = 1
        return {"input_ids": ids, "attention_mask": mask}

    def to_str_tokens(self, ids) -> list[str]:
        """Each token id as its own decoded string."""
        ids = ids.tolist() if isinstance(ids, torch.Tensor) else list(ids)
        return [self.tokenizer.decode([i]) for i in ids]

    # ------------------------------------------------------------- running
    def as_batch(self, inputs) -> dict[str, torch.Tensor]:
        """Normalise text, a list of texts, a 1-D/2-D id tensor or a tokenized dict into a checked batch on the device."""
        if isinstance(inputs, (str, list, tuple)) and (isinstance(inputs, str) or all(isinstance(t, str) for t in inputs)):
            batch = self.tokenize(inputs)
        elif isinstance(inputs, dict):
            batch = dict(inputs)
        else:
            ids = torch.as_tensor(inputs)
            batch = {"input_ids": ids[None] if ids.ndim == 1 else ids}
        ids = batch["input_ids"]
        if ids.ndim != 2:
            raise InputError(f"input_ids must be (batch, tokens), got shape {tuple(ids.shape)}")
        self.check_length(ids.shape[1])
        if int(ids.min()) < 0 or int(ids.max()) >= self.vocab_size:
            raise InputError(f"token ids must lie in 0..{self.vocab_size - 1}")
        return {k: v.to(self.device) for k, v in batch.items() if v is not None}

    @torch.no_grad()
    def logits(self, inputs) -> torch.Tensor:
        """Float32 next-token logits (B, N, vocab) of a forward pass under the active hooks."""
        batch = self.as_batch(inputs)
        return self.model(**batch, use_cache=False).logits.float()

    def logits_kwargs(self, logits: bool) -> dict:
        """Forward kwargs for a pass that does (``logits``) or does not need its logits: ``logits_to_keep=1`` in the
        latter case when the model accepts it, so it never builds B x N x vocab floats (12.6 GB for gemma3-270m's
        262k vocabulary at 10 x 1,201 tokens); the one place that decides it."""
        if logits or "logits_to_keep" not in inspect.signature(self.model.forward).parameters:
            return {}
        return {"logits_to_keep": 1}

    @torch.no_grad()
    def generate(self, prompt, max_new_tokens: int = 20, stop_at_newline: bool = False) -> str:
        """Greedy continuation of ``prompt`` (text), with the KV cache, under the active hooks."""
        batch = self.as_batch(prompt)
        out = self.model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False,
                                  pad_token_id=self.tokenizer.pad_token_id or self.tokenizer.eos_token_id)
        text = self.tokenizer.decode(out[0, batch["input_ids"].shape[1]:], skip_special_tokens=True)
        return text.split("\n")[0] if stop_at_newline else text

    # ------------------------------------------------------------ weights
    @property
    def layers(self) -> torch.nn.ModuleList:
        """The decoder layers (``model.layers``, ``transformer.h``, ... as the architecture names them)."""
        return resolve(self.model, self.arch.layers_path)

    def attention_module(self, layer: int):
        """The HF attention module of ``layer`` (``self_attn``, ``attn``, ``attention``, ...)."""
        return getattr(self.layers[layer], self.arch.attention_name)

    def output_projection(self, layer: int):
        """The module that maps ``layer``'s head outputs z (B, N, H*D) into the residual stream (``o_proj``, ...)."""
        if self.arch.out_proj_name is None:
            raise UnsupportedModelError(
                f"{self.name} ({self.arch.model_class}): the head outputs z do not feed a linear output projection "
                "directly (the model transforms them first), so per-head weights W_O and direct logits are not "
                "defined here; capture and interventions on z still work")
        return getattr(self.attention_module(layer), self.arch.out_proj_name)

    def head_output_weights(self, layer: int) -> torch.Tensor:
        """W_O of ``layer`` per head as float32 (d_model, H, D): head h writes W_O[:, h] z_h into the residual stream."""
        weight = self.output_projection(layer).weight.detach().float()
        if self.arch.out_proj_transposed:  # Conv1D stores (in, out)
            weight = weight.T
        return weight.reshape(self.d_model, self.n_heads, self.d_head)

    def _final_norm(self) -> tuple[Norm, torch.nn.Module]:
        norm = self.arch.final_norm
        if norm is None:
            raise UnsupportedModelError(
                f"{self.name} ({self.arch.model_class}): the final norm feeding the unembedding was not identified "
                "(none, or not RMSNorm / LayerNorm), so direct logits are not defined here")
        return norm, resolve(self.model, norm.path)

    @property
    def final_norm_gain(self) -> torch.Tensor:
        """Per-channel gain g of the final norm as float32 (d_model,): RMSNorm / LayerNorm weight, Gemma's 1 + w."""
        norm, module = self._final_norm()
        return norm.gain(module)

    @torch.no_grad()
    def direct_logits(self, layer: int, z: torch.Tensor) -> torch.Tensor:
        """Each head's direct logit effect W_U g*P(W_O[h] z_h): z (B, Q, H, D) -> (H, B, Q, V), up to a positive factor per position.

        Math (Elhage et al. 2021's direct path; the frozen-scale convention of TransformerLens's logit attribution).
        The final norm maps the residual r to g * P r / s(r) + b, with P = I - 11^T/d (centring) for LayerNorm and
        P = I for RMSNorm, s(r) the standard deviation / RMS and g its gain (Gemma: 1 + w). With s frozen at the
        full stream's value the map is affine, and head h's part c_h = W_O[:, h] z_h of r contributes
        W_U (g * P c_h) / s(r) to the logits; b and the other parts are shared by all heads and left out. A
        post-attention norm (Gemma 2/3, OLMo 2) is folded the same way first: c_h -> g' * P' c_h. An unembedding
        pre-projection (OPT's project_out) is applied before W_U. W_U is the output embedding (the input embedding
        when tied; Gemma's sqrt(d) input scale does not apply to it). The returned values omit the positive
        factors 1/s (one per position and layer), which per-position ranks (the copying score) do not see; they are
        pre-softcap logits (Gemma 2 caps the total, a monotone map).
        """
        z = z.to(self.device, torch.float32)
        parts = torch.einsum("bqhd,mhd->hbqm", z, self.head_output_weights(layer))
        post = self.arch.post_attention_norm
        if post is not None:
            parts = post.linear(resolve(self.layers[layer], post.path), parts)
        norm, module = self._final_norm()
        parts = norm.linear(module, parts)
        if self.arch.unembed_projection is not None:
            parts = parts @ resolve(self.model, self.arch.unembed_projection).weight.detach().float().T
        return parts @ self.model.get_output_embeddings().weight.detach().float().T

    # ------------------------------------------------- other front ends
    @cached_property
    def bridge(self):
        """A TransformerLens ``TransformerBridge`` over the same parameters (built once, on first use).

        The bridge replaces modules in the model it wraps, so it wraps a structural clone whose
        parameters and buffers are this model's own tensors (no second copy of the weights).
        """
        from transformer_lens.model_bridge import TransformerBridge

        shared = {id(t): t for t in [*self.model.parameters(), *self.model.buffers()]}
        clone = copy.deepcopy(self.model, memo=shared)
        if not getattr(clone.config, "architectures", None):  # models built in memory; TL dispatches on it
            clone.config.architectures = [type(clone).__name__]
        return TransformerBridge.boot_transformers(
            self.source or self.name, hf_model=clone, tokenizer=self.tokenizer, device=str(self.device)
        )

    @cached_property
    def nn(self):
        """An nnsight ``LanguageModel`` over this very model (workbench hooks apply inside its traces)."""
        from nnsight import LanguageModel

        return LanguageModel(self.model, tokenizer=self.tokenizer)


def from_pretrained_folder(name: str, folder: str | Path, device=None, dtype=None,
                           weights_note: str = "", meta: dict | None = None, fix: str | None = None) -> Subject:
    """Load an HF folder (or hub id) as a Subject running the workbench attention.

    Unsupported architectures raise UnsupportedModelError before the weights load. A local folder that
    fails to load, or whose logits on a probe token are not finite, raises DamagedModelError with ``fix``
    (what to run to replace the files) in its message.
    """
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from transformers.utils import logging as hf_logging

    attention.register()
    device = resolve_device(device)
    local = Path(folder).expanduser().is_dir()
    fix = fix or "save the model into the folder again (save_pretrained) or restore its files"
    try:
        config = AutoConfig.from_pretrained(folder)
    except Exception:  # noqa: BLE001 - a folder that cannot be read is reported by the load below
        config = None
    if config is not None:
        check_config(config)  # an architecture without the attention interface: say so before loading weights
    hf_logging.disable_progress_bar()  # loading a cached folder takes ~0.5 s: no bar
    try:
        model = AutoModelForCausalLM.from_pretrained(
            folder, dtype=dtype or torch.float32, attn_implementation=attention.IMPLEMENTATION
        ).to(device)
        tokenizer = AutoTokenizer.from_pretrained(folder)
    except (MemoryError, torch.OutOfMemoryError):
        raise
    except Exception as err:
        if not local:
            raise
        reason = (str(err).strip().splitlines() or [""])[0][:200]
        raise DamagedModelError(f"cannot load the model in {folder} ({type(err).__name__}: {reason}): {fix}") from err
    finally:
        hf_logging.enable_progress_bar()
    check_finite_logits(model, tokenizer, folder, fix)
    return Subject(name=name, model=model, tokenizer=tokenizer, source=str(folder),
                   weights_note=weights_note, meta=meta or {})


@torch.no_grad()
def check_finite_logits(model, tokenizer, folder, fix: str) -> None:
    """Run one probe token (BOS, else id 0) and raise DamagedModelError unless every logit is finite."""
    token = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else 0
    if not 0 <= token < model.config.vocab_size:
        token = 0
    device = next(model.parameters()).device
    logits = model(input_ids=torch.tensor([[token]], device=device), use_cache=False).logits
    if not bool(torch.isfinite(logits).all()):
        raise DamagedModelError(f"the model in {folder} gives non-finite logits (NaN or inf) on a probe token: "
                                f"its weights are damaged; {fix}")


def from_model(model, tokenizer, name: str = "custom", weights_note: str = "") -> Subject:
    """Wrap an already-built HF causal LM (e.g. a tiny random model in tests) as a Subject."""
    attention.register()
    check_class(type(model), getattr(model.config, "model_type", ""))
    model.set_attn_implementation(attention.IMPLEMENTATION)
    return Subject(name=name, model=model, tokenizer=tokenizer, weights_note=weights_note)
