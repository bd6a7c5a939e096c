"""``check_model``: is a model supported, and which workbench features work on it (each tried on a short probe).

Used by ``workbench models --check FOLDER``. Every feature is run, not predicted: the model is loaded through
``workbench.models.load`` (an unsupported architecture stops here, with the reason), then on a probe batch of
random tokens each feature is compared with an independent computation on the same weights: transformers'
eager attention (the model switched to ``attn_implementation="eager"`` and back, no second copy), exact
patterns, a forward pre-hook on the output projection, a cache-free greedy loop, TransformerLens's bridge and
nnsight.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field

import torch

from .errors import InputError, UnsupportedModelError
from .models import attention, load

TOL = 1e-4  # float32: relative to max(1, |reference|)


@dataclass
class Feature:
    name: str
    ok: bool | None  # None: not applicable to this model
    detail: str
    seconds: float = 0.0


@dataclass
class ModelCheck:
    source: str
    supported: bool
    reason: str = ""
    architecture: dict = field(default_factory=dict)
    features: list[Feature] = field(default_factory=list)

    def lines(self) -> list[str]:
        """The report as printed by ``workbench models --check``."""
        out = [f"model: {self.source}"]
        if not self.supported:
            return out + [f"supported: no. {self.reason}"]
        a = self.architecture
        out.append(f"architecture: {a['model_class']} ({a['model_type']}), {a['n_layers']} layers x {a['n_heads']} "
                   f"heads ({a['n_kv_heads']} KV), d_head {a['d_head']}, d_model {a['d_model']}")
        out.append(f"  positions {a['positional']}" + (f" (rotary fraction {a['rotary_fraction']})"
                                                       if a['positional'] == "partial_rope" else "")
                   + f"; final norm {a['final_norm']}; post-attention norm {a['post_attention_norm']}; "
                   f"tied embeddings {a['tied_embeddings']}; parallel blocks {a['parallel_block']}")
        local = a["layer_types"].count("sliding")
        out.append(f"  layers: {local} sliding-window (window {a['sliding_window']}), {len(a['layer_types']) - local} "
                   f"global; attention softcap {a['attn_softcap']}; final-logit softcap {a['final_logit_softcap']}; "
                   f"QK-norm {a['qk_norm']}; scaling {a['scaling']}")
        out.append(f"  parts: layers {a['layers_path']}[i].{a['attention_name']}, output projection "
                   f"{a['out_proj_name']}, query source {a['query_source']}")
        out.append("supported: yes")
        for f in self.features:
            state = {True: "ok", False: "FAIL", None: "n/a"}[f.ok]
            out.append(f"  {state:<5}{f.name:<34}{f.detail} ({f.seconds:.1f} s)")
        return out

    @property
    def failed(self) -> list[str]:
        return [f.name for f in self.features if f.ok is False]


class _Mismatch(Exception):
    pass


def _close(got: torch.Tensor, want: torch.Tensor, what: str, tol: float = TOL) -> str:
    diff = float((got.float() - want.float()).abs().max())
    scale = max(1.0, float(want.float().abs().max()))
    if not diff <= tol * scale:
        raise _Mismatch(f"{what}: max |diff| {diff:.1e} > {tol:.0e} x {scale:.2g}")
    return f"{what}: max |diff| {diff:.1e}"


@contextlib.contextmanager
def eager_attention(model):
    """Run ``model`` with transformers' eager attention inside the block (the same weights), then the workbench's."""
    model.set_attn_implementation("eager")
    try:
        yield model
    finally:
        model.set_attn_implementation(attention.IMPLEMENTATION)


def probe_ids(subject, batch: int = 2, n_tokens: int = 16, seed: int = 0) -> torch.Tensor:
    """Random token ids (batch, n_tokens), BOS first where the model has one."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, subject.vocab_size, (batch, n_tokens), generator=g)
    if subject.bos_token_id is not None:
        ids[:, 0] = subject.bos_token_id
    return ids


@torch.no_grad()
def _logits(subject, ids):
    with eager_attention(subject.model):
        want = subject.model(input_ids=ids.to(subject.device), use_cache=False).logits
    return _close(subject.logits(ids), want, "logits vs eager")


@torch.no_grad()
def _capture(subject, ids):
    from .patterns import capture

    cap = capture(subject, ids)
    with eager_attention(subject.model):
        want = subject.model(input_ids=ids.to(subject.device), output_attentions=True, use_cache=False).attentions
    return _close(torch.stack([cap.patterns[i] for i in range(subject.n_layers)]),
                  torch.stack([w.cpu() for w in want]), "patterns vs eager output_attentions")


@torch.no_grad()
def _stats(subject, ids):
    from .kernels import AttentionStatsRequest, log_lag_edges
    from .patterns import capture, capture_stats

    n = ids.shape[1]
    stats = capture_stats(subject, ids, AttentionStatsRequest(entropy=True, lag_bins=log_lag_edges(n)))
    cap = capture(subject, ids)
    lag = torch.arange(n)[:, None] - torch.arange(n)[None, :]
    edges = log_lag_edges(n).tolist()
    got, want = [], []
    for layer in range(subject.n_layers):
        a = cap.patterns[layer].double()
        want += [-torch.xlogy(a, a).sum(-1).flatten(),
                 torch.stack([(a * ((lag >= lo) & (lag < hi))).sum(-1) for lo, hi in zip(edges, edges[1:])], -1).flatten()]
        got += [stats.stats[layer]["entropy"].double().flatten(), stats.stats[layer]["lag_mass"].double().flatten()]
    return _close(torch.cat(got), torch.cat(want), "entropy and lag mass vs exact patterns")


@torch.no_grad()
def _interventions(subject, ids):
    from .interventions import ZeroHead, ZeroQuery, apply
    from .patterns import capture

    layer, head, d = subject.n_layers - 1, 0, subject.d_head
    detail = []
    if getattr(subject.attention_module(layer), "attention_activation", "softmax") == "softmax":
        with apply(subject, ZeroQuery([(layer, head)])):
            pattern = capture(subject, ids, heads=[(layer, head)]).patterns[layer][:, 0]
        visible = torch.tril(torch.ones(ids.shape[1], ids.shape[1]))
        if subject.arch.layer_types[layer] == "sliding":
            visible = torch.triu(visible, diagonal=1 - subject.sliding_window)
        detail.append(_close(pattern, (visible / visible.sum(-1, keepdim=True)).expand_as(pattern),
                             "ZeroQuery uniform"))
    with apply(subject, ZeroHead([(layer, head)])):
        ours = subject.logits(ids)
    try:
        proj = subject.output_projection(layer)
    except UnsupportedModelError:
        return "; ".join(detail + ["ZeroHead not compared (no output projection)"])

    def zero(module, args):
        x = args[0].clone()
        x[..., head * d:(head + 1) * d] = 0
        return (x, *args[1:])

    handle = proj.register_forward_pre_hook(zero)
    try:
        want = subject.logits(ids)
    finally:
        handle.remove()
    return "; ".join(detail + [_close(ours, want, "ZeroHead vs zeroed projection input")])


@torch.no_grad()
def _direct_logits(subject, ids):
    from .patterns import capture

    layer = subject.n_layers - 1
    z = capture(subject, ids, z=True, patterns=False, layers=[layer]).z[layer]
    out = subject.direct_logits(layer, z)
    if not torch.isfinite(out).all():
        raise _Mismatch("direct logits are not finite")
    return f"per-head direct logits {tuple(out.shape)}, final norm {subject.arch.facts()['final_norm']}"


@torch.no_grad()
def _generation(subject, ids, steps: int = 4):
    prompt = ids[:1, :8].to(subject.device)
    pad = subject.tokenizer.pad_token_id if subject.tokenizer is not None else None
    out = subject.model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=steps,
                                 do_sample=False, pad_token_id=pad if pad is not None else 0)
    seq = prompt
    for _ in range(out.shape[1] - prompt.shape[1]):
        seq = torch.cat([seq, subject.logits(seq)[:, -1].argmax(-1, keepdim=True)], dim=1)
    if not torch.equal(out, seq):
        raise _Mismatch("greedy generation with the KV cache differs from the cache-free loop")
    return f"{out.shape[1] - prompt.shape[1]} greedy tokens with the KV cache equal the cache-free loop"


@torch.no_grad()
def _bridge(subject, ids):
    from .interventions import ZeroHead, apply, tl_apply

    detail = _close(subject.bridge(ids.to(subject.device)).float().cpu(), subject.logits(ids).cpu(), "bridge logits")
    spec = ZeroHead([(subject.n_layers - 1, 0)])
    with apply(subject, spec):
        want = subject.logits(ids).cpu()
    with tl_apply(subject, spec) as bridge:
        got = bridge(ids.to(subject.device)).float().cpu()
    return detail + "; " + _close(got, want, "ZeroHead via hook_z")


@torch.no_grad()
def _nnsight(subject, ids):
    from .interventions import ZeroHead, ZeroQuery, apply, nnsight_edit

    details = []
    for spec in (ZeroHead([(subject.n_layers - 1, 0)]), ZeroQuery([(subject.n_layers - 1, 0)])):
        with apply(subject, spec):
            want = subject.logits(ids).cpu()
        with subject.nn.trace(ids.to(subject.device)):
            nnsight_edit(subject, spec)
            out = subject.nn.output.save()
        details.append(_close(out.logits.float().cpu(), want, f"{type(spec).__name__} edit"))
    return "; ".join(details)


FEATURES = (("logits (workbench attention)", _logits), ("exact capture", _capture),
            ("streamed statistics", _stats), ("interventions (z, queries)", _interventions),
            ("direct logits (copying detector)", _direct_logits), ("generation with KV cache", _generation),
            ("TransformerLens bridge", _bridge), ("nnsight", _nnsight))


def check_model(source: str, device=None, n_tokens: int = 16) -> ModelCheck:
    """Load ``source`` (a local HF folder or a registered name) and try every feature on a short probe batch."""
    try:
        subject = load(source, device=device, fetch_missing=False)
    except UnsupportedModelError as err:
        return ModelCheck(str(source), False, str(err))
    ids = probe_ids(subject, n_tokens=min(n_tokens, subject.context_limit))
    result = ModelCheck(str(source), True, architecture=subject.arch.facts())
    for name, run in FEATURES:
        began = time.perf_counter()
        try:
            feature = Feature(name, True, run(subject, ids))
        except (UnsupportedModelError, InputError) as err:  # does not apply to this model
            feature = Feature(name, None, str(err).split(". ")[0])
        except Exception as err:  # a feature that fails is reported, and the others still run
            feature = Feature(name, False, f"{type(err).__name__}: {str(err).splitlines()[0][:200] if str(err) else ''}")
        feature.seconds = time.perf_counter() - began
        result.features.append(feature)
    return result
