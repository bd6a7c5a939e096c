"""The one place that knows model architectures: where the layers, attention, projections and norms are.

``describe(model)`` returns an :class:`Architecture`, derived from the HF config and from module
introspection, and checked by tiny probe forwards (4 tokens) through the workbench hook point:

- the decoder layers are the ``ModuleList`` of ``num_hidden_layers`` blocks under the decoder
  (``model.layers``, ``transformer.h``, ``gpt_neox.layers``, ``model.decoder.layers``, ...);
- each layer's attention module is the child that carries ``layer_idx`` and reaches the hook point with
  that index (a model whose attention never reaches it gets :class:`UnsupportedModelError`);
- the output projection is the child of the attention module whose input *is* the head outputs z the hook
  point returned (``o_proj``, ``c_proj`` (a Conv1D, weight stored transposed), ``dense``, ``out_proj``);
- a post-attention norm (Gemma 2/3, OLMo 2 "sandwich" norms) is the norm module whose input *is* the
  attention module's output; the final norm is the decoder's norm whose output feeds the unembedding;
- each norm's kind is read from what it computes on a probe vector: RMSNorm ``g * x / rms(x)``, Gemma's
  ``(1 + w) * x / rms(x)``, or LayerNorm ``g * (x - mean) / std + b``;
- per layer, the scaling, soft-cap and sliding window are the ones the layer hands the hook point;
  heads, KV heads and head size are the query/key shapes it sees.

The explicit table is small: where the per-head queries live for nnsight edits (``QUERY_SOURCES``),
config keys for parallel attention + MLP blocks, and the unembedding pre-projection (OPT's ``project_out``).
"""

from __future__ import annotations

import itertools
from dataclasses import asdict, dataclass
from typing import Any

import torch

from ..errors import UnsupportedModelError
from . import attention

# architectures the test suite checks end to end (tests/architectures), as (model_type, what users call it)
TESTED = (("gpt2", "GPT-2"), ("gpt_neox", "GPT-NeoX / Pythia"), ("opt", "OPT"), ("llama", "Llama"),
          ("mistral", "Mistral"), ("qwen2", "Qwen2"), ("qwen3", "Qwen3"), ("gemma2", "Gemma 2"),
          ("gemma3_text", "Gemma 3"), ("phi3", "Phi-3"), ("olmo2", "OLMo 2"))

# child of the attention module whose output holds every head's query before rotation, and its layout:
# "blocked" = head h at [h*D, (h+1)*D); "per_head_qkv" = GPT-NeoX's fused (q, k, v) per head, q at [3hD, 3hD+D).
# A norm over the whole query width (OLMo 2's q_norm) is the source, since zeroing before it would change
# the other heads' normalisation; a per-head q_norm maps 0 to 0, so q_proj stays the source.
QUERY_SOURCES = (("q_norm", "blocked"), ("q_proj", "blocked"), ("qkv_proj", "blocked"), ("c_attn", "blocked"),
                 ("Wqkv", "blocked"), ("query_key_value", "per_head_qkv"))
PARALLEL_FLAGS = ("use_parallel_residual", "parallel_attn", "parallel_residual")  # config keys; True = parallel
PARALLEL_TYPES = ("gptj", "phi", "codegen")  # model types whose blocks are always parallel
UNEMBED_PROJECTIONS = ("project_out",)  # decoder children applied after the final norm, before the unembedding


def supported_names() -> str:
    """The tested architectures, for error messages."""
    return ", ".join(name for _, name in TESTED)


@dataclass(frozen=True)
class Norm:
    """A norm module's kind and where it is: ``rms`` (x / rms(x)) or ``layer`` (centred: (x - mean) / std),
    times gain ``weight + offset`` (offset 1 for Gemma's ``(1 + w)``), plus a bias (LayerNorm)."""

    path: str  # relative to the decoder layer (post-attention norm) or to the model (final norm)
    kind: str  # "rms" | "layer"
    offset: float = 0.0

    def gain(self, module) -> torch.Tensor:
        """The per-channel gain g (float32), read from the live weights."""
        weight = getattr(module, "weight", None)
        if weight is None:
            return torch.ones(_width(module), device=_device(module)) + self.offset
        return weight.detach().float() + self.offset

    def linear(self, module, x: torch.Tensor) -> torch.Tensor:
        """The norm's action on one additive part x of its input with the input's scale frozen: g * P x,
        P the centring (I - 11^T/d) for LayerNorm, identity for RMSNorm; bias and 1/scale excluded."""
        if self.kind == "layer":
            x = x - x.mean(-1, keepdim=True)
        return x * self.gain(module).to(x.device)


@dataclass(frozen=True)
class Architecture:
    """What analyses need to know about a model's structure; every path is relative to the HF model."""

    model_type: str
    model_class: str
    n_layers: int
    n_heads: int
    n_kv_heads: int
    d_head: int
    d_model: int
    vocab_size: int
    context_limit: int
    layers_path: str  # the decoder layers' ModuleList
    attention_name: str  # each layer's attention module (child of the layer)
    out_proj_name: str | None  # child of the attention module taking z (B, N, H*D); None if z is transformed first
    out_proj_transposed: bool  # weight stored (H*D, d_model) (GPT-2's Conv1D) rather than (d_model, H*D)
    query_source: str | None  # child of the attention module whose output holds the queries (nnsight edits)
    query_layout: str | None  # "blocked" | "per_head_qkv"
    final_norm: Norm | None
    post_attention_norm: Norm | None  # applied to the attention output before the residual add
    unembed_projection: str | None  # applied after the final norm, before the unembedding (OPT project_out)
    tied_embeddings: bool
    positional: str  # "rope" | "partial_rope" | "learned" | "none"
    rotary_fraction: float | None
    layer_types: tuple[str, ...]  # "full" | "sliding" per layer
    sliding_window: int | None
    scaling: tuple[float, ...]  # per layer, as the layer hands it to the attention function
    attn_softcap: float | None
    final_logit_softcap: float | None
    qk_norm: str | None  # "per_head" | "full_width" | None
    qkv_bias: bool
    out_bias: bool
    parallel_block: bool

    def facts(self) -> dict:
        """JSON-ready summary (Atlas metadata, ``workbench models --check``)."""
        out = asdict(self)
        for key in ("final_norm", "post_attention_norm"):
            norm = getattr(self, key)
            out[key] = None if norm is None else (f"{norm.kind}" + (" (1+w)" if norm.offset else ""))
        out["layer_types"] = list(self.layer_types)
        out["scaling"] = sorted(set(round(s, 6) for s in self.scaling))
        return out


# ---------------------------------------------------------------------------------------------- helpers
def resolve(root, path: str):
    """``root`` followed along a dotted ``path`` (attributes; integer parts index): works on modules and nnsight envoys."""
    node = root
    for part in path.split(".") if path else []:
        node = node[int(part)] if part.isdigit() else getattr(node, part)
    return node


def _width(module) -> int:
    for attr in ("normalized_shape", "hidden_size", "dim"):
        value = getattr(module, attr, None)
        if value is not None:
            return int(value[0] if isinstance(value, (tuple, list, torch.Size)) else value)
    raise UnsupportedModelError(f"cannot tell the width of norm {type(module).__name__}")


def _device(module) -> torch.device:
    for tensor in itertools.chain(module.parameters(), module.buffers()):
        return tensor.device
    return torch.device("cpu")


def is_norm(module) -> bool:
    """A normalisation module (LayerNorm, RMSNorm and the models' own *Norm classes)."""
    return isinstance(module, (torch.nn.LayerNorm, getattr(torch.nn, "RMSNorm", torch.nn.LayerNorm))) or \
        "norm" in type(module).__name__.lower()


def is_projection(module) -> bool:
    """A linear map: nn.Linear or transformers' Conv1D (GPT-2; weight stored transposed)."""
    return isinstance(module, torch.nn.Linear) or type(module).__name__ == "Conv1D"


@torch.no_grad()
def norm_kind(module, path: str, width: int) -> Norm | None:
    """Which norm ``module`` computes, read from its output on a probe vector; None if none of the known forms."""
    param = next(iter(module.parameters()), None)
    dtype = param.dtype if param is not None else torch.float32
    g = torch.Generator().manual_seed(0)
    x = (torch.randn(3, width, generator=g) * 10 + 3).to(_device(module), dtype)
    y = module(x).float()
    xf = x.float()
    weight = getattr(module, "weight", None)
    w = weight.float() if weight is not None else torch.ones(width, device=xf.device)
    b = getattr(module, "bias", None)
    b = b.float() if isinstance(b, torch.Tensor) else 0.0
    rms = xf / xf.pow(2).mean(-1, keepdim=True).sqrt()
    centred = xf - xf.mean(-1, keepdim=True)
    std = centred / centred.pow(2).mean(-1, keepdim=True).sqrt()
    candidates = [("rms", 0.0, w * rms), ("rms", 1.0, (1 + w) * rms),
                  ("layer", 0.0, w * std + b), ("layer", 1.0, (1 + w) * std + b)]
    errors = [(float((y - want).abs().max()), kind, offset) for kind, offset, want in candidates]
    err, kind, offset = min(errors)
    tol = (1e-3 if dtype == torch.float32 else 3e-2) * max(float(y.abs().max()), 1.0)
    return Norm(path, kind, offset) if err <= tol else None


def _named(root: torch.nn.Module, target: torch.nn.Module) -> str:
    for name, module in root.named_modules():
        if module is target:
            return name
    raise UnsupportedModelError(f"{type(target).__name__} is not part of {type(root).__name__}")


def _decoder_layers(model) -> tuple[str, torch.nn.ModuleList]:
    n = getattr(model.config, "num_hidden_layers", None)
    roots = []
    try:
        roots.append(model.get_decoder())
    except (AttributeError, NotImplementedError):
        pass
    roots.append(model)
    for root in roots:
        for module in root.modules():
            if isinstance(module, torch.nn.ModuleList) and len(module) == n and len(module) > 0:
                return _named(model, module), module
    raise UnsupportedModelError(
        f"{type(model).__name__}: found no list of {n} decoder layers (config.num_hidden_layers); "
        f"the workbench supports decoder-only transformers ({supported_names()})")


def _attention_child(layer) -> str:
    found = [name for name, child in layer.named_children()
             if hasattr(child, "layer_idx") and "attention" in type(child).__name__.lower()]
    if not found:
        found = [name for name, child in layer.named_children() if "attention" in type(child).__name__.lower()]
    if not found:
        raise UnsupportedModelError(
            f"{type(layer).__name__} has no attention module: the workbench supports transformer decoders "
            f"whose attention goes through transformers' AttentionInterface ({supported_names()})")
    return found[0]


def _config_value(cfg, *names):
    for name in names:
        value = getattr(cfg, name, None)
        if value is not None:
            return value
    return None


def _rotary_fraction(cfg, d_head: int) -> float | None:
    rope = getattr(cfg, "rope_parameters", None) or {}
    if isinstance(rope, dict) and "partial_rotary_factor" in rope:
        return float(rope["partial_rotary_factor"])
    value = _config_value(cfg, "partial_rotary_factor", "rotary_pct")
    if value is not None:
        return float(value)
    dim = getattr(cfg, "rotary_dim", None)
    return dim / d_head if dim else 1.0


def _positional(model, decoder, cfg, d_head: int, layers) -> tuple[str, float | None]:
    """rope / partial_rope (a rotary-embedding module), learned (a position-embedding table), or none."""
    outside = [m for name, m in decoder.named_children() if m is not layers]
    if any("rotary" in type(m).__name__.lower() for m in outside) or \
            any("rotary" in type(m).__name__.lower() for m in layers[0].modules()):
        fraction = _rotary_fraction(cfg, d_head)
        return ("partial_rope" if fraction is not None and fraction < 1 else "rope"), fraction
    tokens = model.get_input_embeddings()
    if any(isinstance(m, torch.nn.Embedding) and m is not tokens for m in outside):
        return "learned", None
    return "none", None


def check_class(model_class, model_type: str = "") -> None:
    """Raise UnsupportedModelError if ``model_class`` does not route attention through transformers' AttentionInterface."""
    compatible = getattr(model_class, "is_backend_compatible", None)
    if compatible is not None and not compatible():
        name = getattr(model_class, "__name__", str(model_class))
        raise UnsupportedModelError(
            f"{name}{f' ({model_type})' if model_type else ''} computes attention inside its own modules instead of "
            "through transformers' AttentionInterface, so the workbench's hook point cannot see or edit its heads "
            f"(capture, statistics, interventions). Supported: models whose attention uses the interface; tested: "
            f"{supported_names()}. See docs/architectures.md")


def check_config(config) -> None:
    """Before loading weights: raise UnsupportedModelError if the config's causal-LM class cannot use the hook point."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

    try:
        model_class = MODEL_FOR_CAUSAL_LM_MAPPING[type(config)]
    except KeyError:  # not a registered causal LM: from_pretrained gives its own error
        return
    check_class(model_class, getattr(config, "model_type", ""))


class _Probe(attention.AttentionHook):
    """Records each layer's call (module, shapes, scaling, window, softcap) and returned z, and optionally zeroes a
    query slice."""

    def __init__(self):
        self.calls: dict[int, attention.AttentionCall] = {}
        self.z: dict[int, torch.Tensor] = {}
        self.query: dict[int, torch.Tensor] = {}

    def on_qk(self, call, query, key):
        self.query[call.layer] = query.detach()

    def on_z(self, call, z):
        self.calls[call.layer] = call
        self.z[call.layer] = z.detach()


def _probe_ids(model, n: int) -> torch.Tensor:
    vocab = model.config.vocab_size
    device = _device(model)
    return (torch.arange(n, device=device) % vocab)[None]


@torch.no_grad()
def _run_probe(model, ids, module_hooks=()):
    """One forward of ``ids`` with only the probe active; ``module_hooks``: [(module, pre?, fn)] registered for it."""
    probe = _Probe()
    handles = []
    try:
        for module, pre, fn in module_hooks:
            handles.append(module.register_forward_pre_hook(fn) if pre else module.register_forward_hook(fn))
        with attention.hooks_active(probe, only=True):
            model(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=False)
    finally:
        for handle in handles:
            handle.remove()
    return probe


def _same(a, b) -> bool:
    return isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.shape == b.shape and \
        torch.allclose(a.float(), b.float(), atol=1e-5, rtol=1e-4)


@torch.no_grad()
def describe(model) -> Architecture:
    """The Architecture of an HF causal LM running ``attn_implementation="workbench"`` (probe forwards included)."""
    cfg = model.config
    model_type = getattr(cfg, "model_type", "") or ""
    check_class(type(model), model_type)
    layers_path, layers = _decoder_layers(model)
    n_layers = len(layers)
    attn_name = _attention_child(layers[0])
    attn_modules = [getattr(layer, attn_name) for layer in layers]
    try:
        decoder = model.get_decoder()
    except (AttributeError, NotImplementedError):
        decoder = model

    # --- probe 1: every layer reaches the hook point; find the output projection, post-attention and final norms
    seen: dict[str, Any] = {}

    def keep(key, pre):
        def fn(module, args, *rest):
            value = args[0] if pre and args else (rest[0] if rest else None)
            if not pre and isinstance(value, tuple):
                value = value[0]
            seen[key] = value.detach() if isinstance(value, torch.Tensor) else None
        return fn

    attn0 = attn_modules[0]
    proj_candidates = {name: m for name, m in attn0.named_children() if is_projection(m)}
    layer_norms = {name: m for name, m in layers[0].named_modules() if name and is_norm(m)
                   and not name.startswith(attn_name + ".")}
    final_candidates = {name: m for name, m in decoder.named_children() if is_norm(m)}
    unembed = model.get_output_embeddings()
    hooks = [(attn0, False, keep("attn_out", False)), (unembed, True, keep("unembed_in", True))]
    hooks += [(m, True, keep(f"proj:{name}", True)) for name, m in proj_candidates.items()]
    hooks += [(m, False, keep(f"projout:{name}", False)) for name, m in proj_candidates.items()]
    hooks += [(m, True, keep(f"norm:{name}", True)) for name, m in layer_norms.items()]
    hooks += [(m, False, keep(f"final:{name}", False)) for name, m in final_candidates.items()]
    ids = _probe_ids(model, 4)
    probe = _run_probe(model, ids, hooks)

    reached = sorted(probe.calls)
    wrong = [i for i, call in probe.calls.items() if i >= n_layers or call.module is not attn_modules[i]]
    if reached != list(range(n_layers)) or wrong:
        missing = sorted(set(range(n_layers)) - set(reached))
        raise UnsupportedModelError(
            f"{type(model).__name__} ({model_type}): "
            + (f"the attention of layers {missing} never reached the workbench hook point "
               "(those layers compute attention themselves, e.g. Mamba/linear-attention blocks, or their attention "
               "modules carry no layer_idx)" if missing else
               f"attention calls of layers {wrong} came from modules other than layer.{attn_name}")
            + f". Supported: transformer decoders whose every layer's attention uses transformers' "
              f"AttentionInterface; tested: {supported_names()}. See docs/architectures.md")

    call0, z0 = probe.calls[0], probe.z[0]
    n_heads, n_kv, d_head = call0.n_heads, call0.n_kv_heads, z0.shape[-1]
    d_model = int(getattr(cfg, "hidden_size", 0) or model.get_input_embeddings().embedding_dim)
    flat_z = z0.reshape(*z0.shape[:-2], -1)
    out_proj = next((name for name in proj_candidates if _same(seen.get(f"proj:{name}"), flat_z)), None)
    transposed = False
    if out_proj is not None:
        weight = proj_candidates[out_proj].weight
        transposed = type(proj_candidates[out_proj]).__name__ == "Conv1D"
        if not _same(seen.get(f"projout:{out_proj}"), seen.get("attn_out")):
            out_proj = None  # something acts between the projection and the attention module's output
        elif tuple(weight.shape) != ((n_heads * d_head, d_model) if transposed else (d_model, n_heads * d_head)):
            out_proj = None

    post_norm = None
    for name, module in layer_norms.items():
        if _same(seen.get(f"norm:{name}"), seen.get("attn_out")):
            post_norm = norm_kind(module, name, d_model)
            break

    final_norm, unembed_projection = None, None
    for proj_name in UNEMBED_PROJECTIONS:
        if isinstance(getattr(decoder, proj_name, None), torch.nn.Module):
            unembed_projection = _named(model, getattr(decoder, proj_name))
    for name, module in final_candidates.items():
        out = seen.get(f"final:{name}")
        if unembed_projection is not None and isinstance(out, torch.Tensor):
            out = resolve(model, unembed_projection)(out)
        if _same(out, seen.get("unembed_in")):
            final_norm = norm_kind(module, _named(model, module), d_model)
            break

    # --- probe 2: which child's output holds the queries (zeroing head 0's slice there zeroes exactly that query)
    query_source, query_layout = _query_source(model, ids, probe.query.get(0), attn0, n_heads, d_head)

    windows = [probe.calls[i].window for i in range(n_layers)]
    limit = int(getattr(cfg, "max_position_embeddings", 0) or 2048)
    layer_types = tuple("sliding" if w is not None and w < limit else "full" for w in windows)
    sliding = [w for w, t in zip(windows, layer_types) if t == "sliding"]
    softcaps = {probe.calls[i].softcap for i in range(n_layers)} - {None}
    positional, fraction = _positional(model, decoder, cfg, d_head, layers)
    q_norm = getattr(attn0, "q_norm", None)
    qk_norm = None
    if q_norm is not None and getattr(q_norm, "weight", None) is not None:
        qk_norm = "full_width" if q_norm.weight.numel() == n_heads * d_head else "per_head"
    qkv_bias = any(getattr(m, "bias", None) is not None for name, m in proj_candidates.items() if name != out_proj)
    out_bias = out_proj is not None and getattr(proj_candidates[out_proj], "bias", None) is not None
    parallel = model_type in PARALLEL_TYPES or any(bool(getattr(cfg, k, False)) for k in PARALLEL_FLAGS)
    tied = unembed is not None and unembed.weight is model.get_input_embeddings().weight
    return Architecture(
        model_type=model_type, model_class=type(model).__name__, n_layers=n_layers, n_heads=n_heads,
        n_kv_heads=n_kv, d_head=d_head, d_model=d_model, vocab_size=int(cfg.vocab_size), context_limit=limit,
        layers_path=layers_path, attention_name=attn_name, out_proj_name=out_proj, out_proj_transposed=transposed,
        query_source=query_source, query_layout=query_layout, final_norm=final_norm, post_attention_norm=post_norm,
        unembed_projection=unembed_projection, tied_embeddings=bool(tied), positional=positional,
        rotary_fraction=fraction, layer_types=layer_types, sliding_window=max(sliding) if sliding else None,
        scaling=tuple(float(probe.calls[i].scaling) for i in range(n_layers)),
        attn_softcap=max(softcaps) if softcaps else None,
        final_logit_softcap=getattr(cfg, "final_logit_softcapping", None),
        qk_norm=qk_norm, qkv_bias=bool(qkv_bias), out_bias=bool(out_bias), parallel_block=parallel,
    )


def query_slice(layout: str, head: int, d_head: int) -> slice:
    """Where head ``head``'s query sits in the last dimension of the query source's output."""
    start = head * 3 * d_head if layout == "per_head_qkv" else head * d_head
    return slice(start, start + d_head)


def _query_source(model, ids, base, attn, n_heads: int, d_head: int) -> tuple[str | None, str | None]:
    """The first QUERY_SOURCES child whose head-0 slice, zeroed, zeroes head 0's query and leaves the others
    (``base``: layer 0's queries on ``ids`` with nothing zeroed)."""
    for name, layout in QUERY_SOURCES:
        module = getattr(attn, name, None)
        if not isinstance(module, torch.nn.Module):
            continue

        def zero(module, args, out, layout=layout):
            out = out.clone()
            out[..., query_slice(layout, 0, d_head)] = 0
            return out

        got = _run_probe(model, ids, [(module, False, zero)]).query.get(0)
        if got is None or base is None or got.shape != base.shape:
            continue
        if float(got[:, 0].abs().max()) == 0 and (n_heads == 1 or _same(got[:, 1:], base[:, 1:])):
            return name, layout
    return None, None
