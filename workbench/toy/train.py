"""Train a toy model on synthetic sequences, checkpointing on a log schedule and scoring every checkpoint.

A run folder holds ``train_config.json``, ``checkpoints/step-0000123/`` (safetensors weights + HF config +
tokenizer + optimizer state as safetensors; each folder written under a temporary name and renamed when
complete), ``log.parquet`` (per-step training loss, overall and per data segment), ``evals.parquet`` (held-out
loss per checkpoint) and the per-checkpoint atlas tables of :mod:`workbench.toy.trajectory`. Everything is written
atomically, so a killed run resumes from its last checkpoint with the same batches (batch ``s`` is drawn from
seed ``(seed, s)``) and the same optimizer state.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ..errors import InputError
from ..io import atomic_write_json
from ..models.subject import resolve_device
from ..progress import progress
from .config import ToyConfig
from .data import GENERATORS, ToyBatch, make_batch
from .trajectory import ScoreConfig, score_missing
from .run_folder import (CONFIG_FILE, EVAL_FILE, LOG_FILE, OPTIMIZER_FILE, STATE_FILE, checkpoint_dir,
                         list_checkpoints, read_table, write_table)



@dataclass
class TrainConfig:
    """Everything that determines a run: the model, the data, the optimiser, the checkpoint schedule, the scores."""

    name: str = "toy"
    seed: int = 0
    steps: int = 2000
    batch_size: int = 32
    lr: float = 1e-3
    warmup_steps: int = 50
    schedule: str = "constant"  # or "cosine" (decay to lr * min_lr_ratio at the last step)
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.98)
    grad_clip: float = 1.0
    n_checkpoints: int = 30  # log-spaced checkpoint steps between 1 and `steps` (step 0 is always saved)
    eval_batch: int = 64
    device: str = "auto"
    model: dict = field(default_factory=dict)  # ToyConfig fields
    data: dict = field(default_factory=lambda: {"kind": "repeated", "seq_len": 50, "min_len": 8})
    eval_data: dict = field(default_factory=dict)  # overrides of `data` for a second, held-out evaluation
    scores: dict = field(default_factory=dict)  # see trajectory.ScoreConfig

    def __post_init__(self):
        self.betas = tuple(self.betas)
        problems = []
        if self.steps < 1 or self.batch_size < 1 or self.eval_batch < 1 or self.n_checkpoints < 1:
            problems.append("steps, batch_size, eval_batch and n_checkpoints must be >= 1")
        if not self.lr > 0 or self.warmup_steps < 0 or not 0 <= self.min_lr_ratio <= 1:
            problems.append("lr > 0, warmup_steps >= 0 and 0 <= min_lr_ratio <= 1")
        if self.schedule not in ("constant", "cosine"):
            problems.append(f"schedule={self.schedule!r} (constant or cosine)")
        if self.data.get("kind", "repeated") not in GENERATORS:
            problems.append(f"data.kind={self.data.get('kind')!r} (one of {', '.join(GENERATORS)})")
        if problems:
            raise InputError("bad training config: " + "; ".join(problems))
        self.model_config()  # checks the model fields
        ScoreConfig.from_dict(self.scores)  # checks the score fields

    def model_config(self) -> ToyConfig:
        """The ToyConfig of the model this run trains."""
        unknown = set(self.model) - {f.name for f in dataclasses.fields(ToyConfig)}
        if unknown:
            raise InputError(f"unknown model field(s) {', '.join(sorted(unknown))}: see workbench.toy.ToyConfig")
        return ToyConfig(**self.model)

    def to_dict(self) -> dict:
        return json.loads(json.dumps(dataclasses.asdict(self)))

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        unknown = set(d) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise InputError(f"unknown training config key(s) {', '.join(sorted(unknown))}: the keys are "
                             f"{', '.join(f.name for f in dataclasses.fields(cls))}")
        return cls(**d)


def load_config(path: str | Path) -> TrainConfig:
    """Read a TrainConfig from a .json or .toml file."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"no config file at {path}: pass a .json or .toml training config")
    try:
        if path.suffix == ".toml":
            import tomllib

            d = tomllib.loads(path.read_text(encoding="utf-8"))
        elif path.suffix == ".json":
            d = json.loads(path.read_text(encoding="utf-8"))
        else:
            raise InputError(f"{path} is neither .json nor .toml")
    except (ValueError, OSError) as err:
        raise InputError(f"cannot read {path}: {err}") from None
    return TrainConfig.from_dict(d)


def checkpoint_steps(steps: int, n: int) -> list[int]:
    """Step 0 and ``n`` log-spaced steps from 1 to ``steps`` (rounded, unique, always including ``steps``)."""
    spaced = np.unique(np.round(np.geomspace(1, steps, n)).astype(int)) if n > 1 else np.array([steps])
    return [0] + sorted(set(spaced.tolist()) | {steps})


def lr_at(config: TrainConfig, step: int) -> float:
    """Learning rate of update ``step`` (1-based): linear warm-up, then constant or cosine decay."""
    if config.warmup_steps and step <= config.warmup_steps:
        return config.lr * step / config.warmup_steps
    if config.schedule == "constant":
        return config.lr
    progress_ = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
    return config.lr * (config.min_lr_ratio + (1 - config.min_lr_ratio) * 0.5 * (1 + np.cos(np.pi * progress_)))


def batch_seed(seed: int, step: int) -> int:
    """The data seed of training step ``step`` (evaluation uses step -1)."""
    return seed * 1_000_003 + step + 1


def token_losses(model, batch: ToyBatch, device, hits: bool = False):
    """Per-target cross-entropy (B, N-1) of next-token prediction and the mask of targets; with ``hits``, also
    whether each prediction's argmax is the target (B, N-1)."""
    ids = batch.input_ids.to(device)
    logits = model(input_ids=ids, use_cache=False).logits[:, :-1]
    losses = torch.nn.functional.cross_entropy(logits.flatten(0, 1).float(), ids[:, 1:].flatten(), reduction="none")
    out = losses.view(ids.shape[0], -1), batch.loss_mask[:, 1:].to(device)
    return (*out, logits.argmax(-1) == ids[:, 1:]) if hits else out


def segment_losses(losses: torch.Tensor, batch: ToyBatch) -> dict[str, float]:
    """Mean loss over each named segment's targets (NaN for an empty segment)."""
    out = {}
    for name, mask in batch.segments.items():
        m = mask[:, 1:].to(losses.device)
        out[f"loss_{name}"] = float(losses[m].mean()) if bool(m.any()) else float("nan")
    return out


# ------------------------------------------------------------------ checkpoints
def save_model(model, tokenizer, folder: str | Path) -> Path:
    """Write weights (safetensors), HF config and tokenizer into ``folder`` (loadable with ``wb.load(folder)``)."""
    from transformers.utils import logging as hf_logging

    folder = Path(folder)
    hf_logging.disable_progress_bar()  # a one-shard "writing" bar per checkpoint is noise
    try:
        model.save_pretrained(folder, safe_serialization=True)
    finally:
        hf_logging.enable_progress_bar()
    tokenizer.save_pretrained(folder)
    return folder


def save_checkpoint(run_dir: Path, step: int, model, tokenizer, optimizer, state: dict) -> Path:
    """Write a complete checkpoint folder under a temporary name, then rename it into place."""
    from safetensors.torch import save_file

    final = checkpoint_dir(run_dir, step)
    tmp = final.with_name(f".{final.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    save_model(model, tokenizer, tmp)
    opt = optimizer.state_dict()
    tensors = {f"{i}.{k}": v.detach().cpu().contiguous() for i, s in opt["state"].items() for k, v in s.items()}
    save_file(tensors, str(tmp / OPTIMIZER_FILE))
    atomic_write_json(tmp / STATE_FILE, {**state, "step": step, "param_groups": opt["param_groups"]})
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    return final


def load_optimizer(optimizer, folder: Path) -> None:
    """Restore an optimizer's state written by :func:`save_checkpoint`."""
    from safetensors.torch import load_file

    tensors = load_file(str(folder / OPTIMIZER_FILE))
    state: dict[int, dict] = {}
    for key, value in tensors.items():
        idx, name = key.split(".", 1)
        state.setdefault(int(idx), {})[name] = value
    groups = json.loads((folder / STATE_FILE).read_text())["param_groups"]
    optimizer.load_state_dict({"state": state, "param_groups": groups})


# ------------------------------------------------------------------ training
def _start(config: TrainConfig, run_dir: Path, resume: bool, device):
    """Build or restore the model, tokenizer, optimizer and logs; returns them with the step to continue from."""
    from ..models import from_model
    from . import ToyForCausalLM, toy_tokenizer

    run_dir.mkdir(parents=True, exist_ok=True)
    saved = run_dir / CONFIG_FILE
    checkpoints = list_checkpoints(run_dir)
    if checkpoints and not resume:
        raise InputError(f"{run_dir} already holds a run: resume it (the default), pass a new --out folder, "
                         "or delete the folder to start over")
    if saved.is_file() and TrainConfig.from_dict(json.loads(saved.read_text())).to_dict() != config.to_dict():
        raise InputError(f"{run_dir} holds a run with a different config ({saved}): use a new --out folder "
                         "to train with this one")
    atomic_write_json(saved, config.to_dict())
    if checkpoints:
        step, folder = checkpoints[-1]
        model = ToyForCausalLM.from_pretrained(folder, dtype=torch.float32)
        tokenizer = toy_tokenizer(model.config.vocab_size, run_dir / "tokenizer")
    else:
        step, folder = None, None
        torch.manual_seed(config.seed)
        model = ToyForCausalLM(config.model_config())
        tokenizer = toy_tokenizer(model.config.vocab_size, run_dir / "tokenizer")
    model.to(device)
    subject = from_model(model, tokenizer, name=config.name)
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    keep = [p for n, p in model.named_parameters() if p.ndim < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": config.weight_decay},
                                   {"params": keep, "weight_decay": 0.0}], lr=config.lr, betas=config.betas)
    if folder is not None:
        load_optimizer(optimizer, folder)
    log = read_table(run_dir / LOG_FILE)
    if step is not None and not log.empty:
        log = log[log["step"] <= step]
    return subject, optimizer, log, step


@torch.no_grad()
def evaluate(model, config: TrainConfig, device) -> dict[str, float]:
    """Loss and top-1 accuracy (overall and per segment) on a fixed batch drawn with seed (seed, -1), as ``eval_*``;
    with ``eval_data``, also on a batch of ``data`` updated by it (e.g. held-out items), as ``heldout_*``."""
    was_training = model.training
    model.eval()
    out = {}
    sets = [("eval", config.data)] + ([("heldout", {**config.data, **config.eval_data})] if config.eval_data else [])
    for prefix, data in sets:
        batch = make_batch(data, model.config.vocab_size, config.eval_batch, batch_seed(config.seed, -1))
        losses, mask, hits = token_losses(model, batch, device, hits=True)
        out[f"{prefix}_loss"] = float(losses[mask].mean())
        out.update({f"{prefix}_{k}": v for k, v in segment_losses(losses, batch).items()})
        out[f"{prefix}_accuracy"] = float(hits[mask].float().mean())
        for name, seg in batch.segments.items():
            m = seg[:, 1:].to(device)
            out[f"{prefix}_accuracy_{name}"] = float(hits[m].float().mean()) if bool(m.any()) else float("nan")
    model.train(was_training)
    return out


def train(config: TrainConfig, out_dir: str | Path, resume: bool = True, score: bool = True,
          device: str | None = None) -> Path:
    """Train (or resume) a toy model into ``out_dir``; checkpoint, evaluate and score on the log schedule."""
    run_dir = Path(out_dir)
    device = resolve_device(device or config.device)
    subject, optimizer, log, last = _start(config, run_dir, resume, device)
    model = subject.model
    schedule = checkpoint_steps(config.steps, config.n_checkpoints)
    evals = read_table(run_dir / EVAL_FILE)
    rows = log.to_dict("records")
    tokens = int(rows[-1]["tokens"]) if rows else 0
    started = time.time()

    def checkpoint(step: int, loss: float | None):
        state = {"tokens": tokens, "train_loss": loss, "wall_s": round(time.time() - started, 2),
                 "device": str(device)}
        save_checkpoint(run_dir, step, model, subject.tokenizer, optimizer, state)
        nonlocal evals
        row = pd.DataFrame([{"step": step, "tokens": tokens, **evaluate(model, config, device)}])
        evals = row if evals.empty else pd.concat([evals[evals["step"] != step], row], ignore_index=True)
        write_table(run_dir / EVAL_FILE, evals.sort_values("step"))
        write_table(run_dir / LOG_FILE, pd.DataFrame(rows))
        if score:
            score_missing(run_dir, subject=subject)
            model.train()

    if last is None:
        checkpoint(0, None)
        last = 0
    model.train()
    bar = progress(range(last + 1, config.steps + 1), desc=f"train {config.name}", unit="step",
                   total=config.steps - last)
    for step in bar:
        batch = make_batch(config.data, model.config.vocab_size, config.batch_size, batch_seed(config.seed, step))
        lr = lr_at(config, step)
        for group in optimizer.param_groups:
            group["lr"] = lr
        losses, mask = token_losses(model, batch, device)
        loss = losses[mask].mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if config.grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        optimizer.step()
        tokens += int(mask.sum())
        rows.append({"step": step, "tokens": tokens, "lr": lr, "loss": loss.item(),
                     **segment_losses(losses.detach(), batch)})
        if step % 25 == 0:
            bar.set_postfix(loss=f"{loss.item():.3f}")
        if step in schedule:
            checkpoint(step, loss.item())
    if score:
        score_missing(run_dir, subject=subject)
    model.eval()
    return run_dir
