"""Small-scale models: train toy transformers on synthetic sequences, checkpoint them, and follow heads through training.

Importing this package registers the ``workbench-toy`` architecture with transformers' ``AutoConfig`` and
``AutoModelForCausalLM``, so a saved toy checkpoint loads like any HF folder (``wb.load(folder)``).
"""

from __future__ import annotations

from transformers import AutoConfig, AutoModelForCausalLM

from .config import MODEL_TYPE, ToyConfig
from .model import ToyForCausalLM, ToyModel
from .tokenizer import toy_tokenizer

AutoConfig.register(MODEL_TYPE, ToyConfig, exist_ok=True)
AutoModelForCausalLM.register(ToyConfig, ToyForCausalLM, exist_ok=True)


def build(config: ToyConfig | dict | None = None, seed: int = 0, tokenizer_dir=None, name: str = "toy", **fields):
    """A freshly initialised toy model (seeded) with its tokenizer, wrapped as a Subject on the workbench hook point."""
    import torch

    from ..models import from_model

    if config is None or isinstance(config, dict):
        config = ToyConfig(**{**(config or {}), **fields})
    elif fields:
        config = ToyConfig(**{**config.to_dict(), **fields})
    torch.manual_seed(seed)
    model = ToyForCausalLM(config)
    return from_model(model, toy_tokenizer(config.vocab_size, tokenizer_dir), name=name)


__all__ = ["MODEL_TYPE", "ToyConfig", "ToyForCausalLM", "ToyModel", "build", "toy_tokenizer"]
