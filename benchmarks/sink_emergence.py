"""Attention sinks through training, softmax vs sigmoid attention (Gu et al. 2024, "When Attention Sink Emerges").

Trains two otherwise identical toy models (2 attention-only layers, RoPE, 4 heads; ``--mlp`` adds MLPs) on the same
seeded data (the periodic random tokens of ``toy-induction-2l``, or in-context Markov chains), one with
softmax attention and one with elementwise sigmoid attention without normalisation (Gu et al. 2024, section 7) and
the constant score bias -log(sequence length) (Ramapuram et al. 2024; without it the toy model does not learn), and
scores every log-spaced checkpoint with the scan's ``sink`` detector: ``Sink_1^eps`` = share of (sample, layer,
head) whose first token (BOS) gets importance alpha_0 > 0.3, alpha_0 = mean attention on it over the queries
(Gu et al.'s metric, METHODS.md s5), on 64-token random-token prompts. For the sigmoid model alpha_0 is computed
on the raw (unnormalised) sigmoid weights, as the detector sees them; the table adds it on row-normalised weights
(each query's weights divided by their sum), the share of a query's total attention that the first token takes.

    PYTHONPATH=. python benchmarks/sink_emergence.py [--steps 1500] [--data repeated|markov] [--mlp] [--out DIR]

Runs on the GPU when present, else the CPU (about 7 minutes per model for 1500 steps on a busy 2-core CPU).

Measured on the CPU, seed 0, 1500 steps, periodic random tokens, attention-only: softmax Sink_1^0.3 rises from 0
(steps 0-105) to 8.7% (step 204, the phase change), 18.1% (772) and 31.2% (1500); a layer-0 head and three
layer-1 heads (the induction heads, which park on BOS where the token has no earlier occurrence) hold it. Sigmoid:
12.5% from step 397 on, all of it one layer-1 head (alpha_0 = 0.77) that is not an induction head; the sigmoid
induction heads put ~0.005 on BOS. Both learn the task (held-out repeat loss 0.083 vs 0.109 nats). So the no-op sink
of the induction heads does not form without normalisation, but one first-token head does: only partly Gu et al.'s
"no sink". On in-context Markov chains (16 states) neither model learned in 1500 steps and neither had a sink.
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time
from pathlib import Path

import torch

from workbench.patterns import capture
from workbench.scores import key_importance
from workbench.stimuli import random_token_ids
from workbench.toy.train import TrainConfig, train
from workbench.toy.trajectory import load_run

DATA = {"repeated": {"kind": "repeated", "seq_len": 50, "min_len": 8},
        "markov": {"kind": "markov", "length": 64, "n_states": 16}}
LENGTH = {"repeated": 101, "markov": 65}  # training sequence length (BOS included)
IN_CONTEXT = {"repeated": "repeat", "markov": "late"}  # the data's segment predictable only in context


def config(activation: str, steps: int, data: str, seed: int, mlp: bool) -> TrainConfig:
    return TrainConfig.from_dict({
        "name": f"sink-{activation}", "seed": seed, "steps": steps, "batch_size": 32, "lr": 3e-3,
        "warmup_steps": 50, "n_checkpoints": 12,
        "model": {"vocab_size": 68, "hidden_size": 64, "num_attention_heads": 4, "intermediate_size": 128 if mlp else 0,
                  "attention_activation": activation,
                  **({"sigmoid_bias": -math.log(LENGTH[data])} if activation == "sigmoid" else {})},
        "data": DATA[data],
        "scores": {"detectors": ["sink", "induction"], "lag_crp": False, "settings": {"seq_len": 50}}})


def normalised_sink(subject, seed: int = 2, batch: int = 20, n_tokens: int = 64, epsilon: float = 0.3) -> float:
    """Sink_1^eps on row-normalised attention (BOS + 63 random tokens, the sink detector's prompts)."""
    ids = random_token_ids(subject, batch, n_tokens - 1, seed, distinct=False)
    ids = torch.cat([torch.full((batch, 1), subject.bos_token_id), ids], dim=1)
    cap = capture(subject, ids)
    pats = torch.stack([cap.patterns[layer] for layer in range(subject.n_layers)])  # (L, B, H, N, N)
    pats = pats / pats.sum(-1, keepdim=True).clamp_min(1e-12)
    return float((key_importance(pats)[..., 0] > epsilon).float().mean())


def main() -> None:
    import workbench as wb

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--data", choices=list(DATA), default="repeated")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--mlp", action="store_true", help="add gated MLPs (intermediate size 128)")
    parser.add_argument("--out", default=None, help="keep the two runs here (default: a temporary folder); "
                                                    "an existing run there is resumed, a finished one reused")
    args = parser.parse_args()
    out = Path(args.out or tempfile.mkdtemp(prefix="sink-emergence-"))
    runs, seconds, normalised = {}, {}, {}
    for activation in ("softmax", "sigmoid"):
        started = time.time()
        runs[activation] = run = load_run(train(config(activation, args.steps, args.data, args.seed, args.mlp),
                                                out / activation))
        seconds[activation] = time.time() - started
        normalised[activation] = {step: normalised_sink(wb.load(str(run.checkpoint(step)), device="cpu"))
                                  for step in run.steps}
    print(f"\nSink_1^0.3 in % (sample x layer x head with alpha_0 > 0.3; mean over heads, and the top head), "
          f"data={args.data}, mlp={args.mlp}, seed={args.seed}, device={'cuda' if torch.cuda.is_available() else 'cpu'}")
    print(f"{'step':>6} | {'softmax':>7} {'top':>5} | {'sigmoid raw':>11} {'top':>5} | {'sigmoid row-normalised':>22}")
    rates = {a: r.atlas.groupby("step")["sink_rate"] for a, r in runs.items()}
    for step in runs["softmax"].steps:
        soft, sig = rates["softmax"].get_group(step), rates["sigmoid"].get_group(step)
        print(f"{step:>6} | {100 * soft.mean():7.1f} {100 * soft.max():5.0f} | {100 * sig.mean():11.1f} "
              f"{100 * sig.max():5.0f} | {100 * normalised['sigmoid'][step]:22.1f}")
    for activation, run in runs.items():
        last = run.atlas[run.atlas["step"] == run.steps[-1]]
        segment = IN_CONTEXT[args.data]
        print(f"{activation}: held-out {segment} loss {run.evals.iloc[-1][f'eval_loss_{segment}']:.3f} nats, "
              f"top induction {last['induction'].max():.2f}, mean alpha_0 {last['sink_mass'].mean():.3f}, "
              f"train + score {seconds[activation]:.0f} s")
    print(f"runs: {out}")


if __name__ == "__main__":
    main()
