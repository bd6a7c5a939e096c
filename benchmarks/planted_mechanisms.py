"""Detectors against planted ground truth: train each planted toy model over several seeds, then check every detector.

For each task (temporal, conflict, retrieval) and training seed: train ``data/toy/toy-<task>-2l.toml`` with that seed
(resumed if the run exists), then ``workbench.toy.planted.check_detectors`` on the final checkpoint: held-out accuracy,
ground-truth heads, each detector's top-k precision / recall and the ablation contrast (its top-k vs random heads).
When no head attends to the needed token itself, the ground truth is taken through relay positions
(``ground_truth(relay=RELAY)``) and the summary says so.
One JSON per (task, seed) under OUT/results, and a Markdown summary printed and written to OUT/summary.md.

    nice -n 5 python benchmarks/planted_mechanisms.py --seeds 0 1 2 --out runs/planted [--ship]

Seeds run one after another (the machine is shared); a finished (task, seed) is skipped unless --force (which
rescores it without retraining). --summary only rewrites the summary of every result found under OUT/results.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
TASKS = ("temporal", "conflict", "retrieval")


def one(task: str, seed: int, out: Path, force: bool) -> dict:
    from workbench.io import atomic_write_json
    from workbench.models import from_pretrained_folder
    from workbench.toy.planted import check_detectors, ground_truth, held_out_items
    from workbench.toy.planted.truth import RELAY
    from workbench.toy.run_folder import list_checkpoints
    from workbench.toy.train import TrainConfig, load_config, train

    result_path = out / "results" / f"{task}-seed{seed}.json"
    previous = json.loads(result_path.read_text()) if result_path.is_file() else {}
    if previous and not force:
        return previous
    config = load_config(ROOT / "data" / "toy" / f"toy-{task}-2l.toml")
    config = TrainConfig.from_dict({**config.to_dict(), "seed": seed})
    run = out / f"{config.name}-seed{seed}"
    started = time.time()
    train(config, run, device="cpu")
    train_s = time.time() - started
    step, folder = list_checkpoints(run)[-1]
    subject = from_pretrained_folder(config.name, folder, device="cpu")
    started = time.time()
    if previous.get("steps") == step:  # rescored a finished run: keep the time its training took
        train_s = previous["train_s"]
    result = {"task": task, "seed": seed, "steps": step, "train_s": round(train_s, 1)}
    relay = "world"
    truth = ground_truth(subject, held_out_items(subject))
    if not truth.heads:  # no head attends to the token itself: does one read it through relay positions?
        relay = RELAY
        truth = ground_truth(subject, held_out_items(subject), relay=relay)
    if not truth.heads:  # the mechanism did not form in this run: record it, do not score detectors
        result.update(formed=False, reason="no ground-truth heads", accuracy=truth.intact, truth=truth.summary(),
                      attention=np.round(truth.attention, 4).tolist())
    else:
        if force:  # the detectors' sweeps are a cache of this check: recompute them too
            shutil.rmtree(run / "detectors", ignore_errors=True)
        check = check_detectors(subject, seed=0, out=run / "detectors", relay=relay)
        result.update(formed=True, check_s=round(time.time() - started, 1), accuracy=check.accuracy,
                      truth=check.truth.summary(), detectors=check.table.to_dict("records"),
                      attention=np.round(check.truth.attention, 4).tolist(),
                      scores={k: np.round(v, 4).tolist() for k, v in check.scores.items()})
    atomic_write_json(result_path, result)
    return result


def ship(task: str, out: Path) -> Path:
    """Copy the seed-0 run into data/toy/<name>/ as shipped: the run's tables, the tokenizer and only the final
    checkpoint, without optimizer state (what ``wb.load(name)`` and ``workbench trajectory`` read)."""
    from workbench.toy.run_folder import OPTIMIZER_FILE, list_checkpoints

    name = f"toy-{task}-2l"
    run, dest = out / f"{name}-seed0", ROOT / "data" / "toy" / name
    shutil.rmtree(dest, ignore_errors=True)
    shutil.copytree(run, dest, ignore=shutil.ignore_patterns("detectors", "checkpoints"))
    step, folder = list_checkpoints(run)[-1]
    final = dest / "checkpoints" / folder.name
    shutil.copytree(folder, final, ignore=shutil.ignore_patterns(OPTIMIZER_FILE))
    return dest


def summary(results: list[dict]) -> str:
    """Markdown tables: per task, accuracy and ground truth per seed, then per detector P/R and ablation contrast."""
    from workbench.toy.planted.truth import MECHANISM

    lines = []
    for task in TASKS:
        rs = [r for r in results if r["task"] == task]
        if not rs:
            continue
        truth = rs[0]["truth"]
        mech, ctrl = MECHANISM[truth["kind"]]
        lines += [f"### {task}", "", f"| seed | held-out accuracy {mech} / {ctrl} | ground-truth heads (attention) | "
                  f"GT zeroed: {mech} / {ctrl} accuracy |", "| --- | --- | --- | --- |"]
        for r in rs:
            t = r["truth"]
            att = ", ".join(f"{h} {a:.2f}" for h, a in t["attention"].items()) or "none: the mechanism did not form"
            if t.get("relay") and r["task"] != "temporal":
                att += " (through relay positions only: no head attends to the token itself)"
            lines.append(f"| {r['seed']} | {r['accuracy'][mech]:.3f} / {r['accuracy'][ctrl]:.3f} | {att} | "
                         f"{t['ablated'][mech]:.3f} / {t['ablated'][ctrl]:.3f} |")
        lines += ["", f"| detector | seed | top-k | precision | recall | drop {mech} / {ctrl} (top-k) | "
                  f"drop {mech} / {ctrl} (random, mean) |", "| --- | --- | --- | --- | --- | --- | --- |"]
        rows = []
        for r in rs:
            for d in r.get("detectors", []):
                rows.append({**d, "seed": r["seed"]})
                lines.append(f"| {d['detector']} | {r['seed']} | {d['top']} | {d['precision']:.2f} | "
                             f"{d['recall']:.2f} | {d[f'drop_{mech}']:.3f} / {d[f'drop_{ctrl}']:.3f} | "
                             f"{d[f'random_drop_{mech}']:.3f} / {d[f'random_drop_{ctrl}']:.3f} |")
        if rows:
            means = pd.DataFrame(rows).groupby("detector", sort=False)[["precision", "recall"]].mean()
            lines += ["", "mean over seeds: " + "; ".join(f"{name} P {m['precision']:.2f} R {m['recall']:.2f}"
                                                         for name, m in means.iterrows())]
        lines.append("")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tasks", nargs="+", default=list(TASKS), choices=TASKS)
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--out", default="runs/planted")
    p.add_argument("--force", action="store_true", help="recompute finished (task, seed) results")
    p.add_argument("--ship", action="store_true", help="copy each task's seed-0 run into data/toy/ (shipped models)")
    p.add_argument("--summary", action="store_true", help="only summarise the finished results in OUT/results")
    args = p.parse_args(argv)
    out = Path(args.out)
    results = []
    if args.summary:
        found = [json.loads(path.read_text()) for path in (out / "results").glob("*.json")]
        found = {(r["task"], r["seed"]): r for r in found}
        results = [found[key] for key in sorted(found, key=lambda key: (TASKS.index(key[0]), key[1]))]
        args.tasks, args.ship = [], False
    for task in args.tasks:
        for seed in args.seeds:
            results.append(one(task, seed, out, args.force))
            r = results[-1]
            print(f"{task} seed {seed}: accuracy {r['accuracy']}, truth {r['truth']['heads'] or 'none'}, "
                  f"train {r['train_s']} s", flush=True)
    if args.ship:
        for task in args.tasks:
            print(f"shipped {ship(task, out)}")
    text = summary(results)
    (out / "summary.md").write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
