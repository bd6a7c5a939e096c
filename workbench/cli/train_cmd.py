"""``workbench train --config FILE`` (train a toy model, checkpointing and scoring on a log schedule) and
``workbench trajectory DIR`` (summarise a run: phase change, heads through training, HTML report)."""

from __future__ import annotations

from pathlib import Path

from . import validate


def add_parser(sub) -> None:
    p = sub.add_parser("train", help="train a toy transformer on synthetic sequences; checkpoints + per-checkpoint atlas")
    p.add_argument("--config", required=True, type=validate.input_file, help="training config (.json or .toml; see workbench.toy.train.TrainConfig)")
    p.add_argument("--out", default=None, type=validate.output_folder, help="run folder (default runs/<name>); an existing run there is resumed")
    p.add_argument("--device", default=None, type=validate.device, help="cpu, cuda, ... (default: the config's, else the GPU when present)")
    p.add_argument("--no-score", action="store_true", help="skip scoring checkpoints (score later with `workbench trajectory`)")
    p.set_defaults(func=run_train)
    p = sub.add_parser("trajectory", help="summarise a training run (phase change, heads over training) and write its report")
    p.add_argument("run", type=validate.input_folder, help="the run folder written by `workbench train`")
    p.add_argument("--rescore", action="store_true", help="score every checkpoint again (e.g. after changing detectors)")
    p.add_argument("--report", default=None, type=validate.output_file, help="HTML report path (default RUN/trajectory.html)")
    p.add_argument("--device", default=None, type=validate.device, help="device for scoring checkpoints that have no scores yet")
    p.set_defaults(func=run_trajectory)


def run_train(args) -> int:
    import time

    from ..toy.train import load_config, train
    from ..toy.trajectory import format_summary, load_run, summary

    config = load_config(args.config)
    out = Path(args.out or validate.at_run(validate.output_folder, str(Path("runs") / config.name), "--out"))
    started = time.time()
    train(config, out, score=not args.no_score, device=args.device)
    print(f"trained {config.name} for {config.steps} steps in {time.time() - started:.1f} s -> {out}")
    if not args.no_score:
        print(format_summary(summary(load_run(out))))
    return 0


def run_trajectory(args) -> int:
    from ..toy.trajectory import format_summary, load_run, score_missing, summary, write_report

    load_run(args.run)  # a folder that is not a training run is refused before any scoring
    score_missing(args.run, rescore=args.rescore, device=args.device)
    run = load_run(args.run)
    print(format_summary(summary(run)))
    print(f"report: {write_report(run, args.report)}")
    return 0
