"""How stable is the retrieval score across needle families and haystacks? (issue 19; docs/error-bars.md)

Runs one NIAH grid per haystack (same seeded needles in each), each into its own resumable result folder
(``run_niah_grid``), then compares the per-head retrieval scores (Wu et al. 2024) between haystacks and
between needle families: Spearman over all heads and over the heads above 0.1 in either, with each
score's bootstrap interval over the correctly answered tests. CPU-sized defaults (2 lengths x 3 depths x
8 needles per haystack); on a GPU pass longer --lengths.

    PYTHONPATH=. python benchmarks/retrieval_stability.py --out runs/retrieval-stability \\
        --haystacks noise,random,/path/to/pride_and_prejudice.txt
    PYTHONPATH=. python benchmarks/retrieval_stability.py --analyze runs/old-a runs/old-b ...   # folders only

Prints the tables and writes ``summary.json`` into --out.
"""

from __future__ import annotations

import argparse
import json
import time
from itertools import combinations
from pathlib import Path

import numpy as np

from workbench.replicates import agreement
from workbench.retrieval.niah_folder import load_niah
from workbench.retrieval.scoring import RETRIEVAL_THRESHOLD
from workbench.scores.intervals import Bootstrap
from workbench.stimuli.niah import FAMILIES


def run(args) -> dict[str, Path]:
    import torch

    import workbench as wb
    from workbench.retrieval.niah_folder import run_niah_grid
    from workbench.stimuli.niah import niah_grid

    torch.set_num_threads(args.threads)
    subject = wb.load(args.model, device=args.device)
    folders = {}
    for hay in args.haystacks.split(","):
        name = hay if hay in ("noise", "random") else Path(hay).stem
        folder = Path(args.out) / f"{name}"
        grid = niah_grid(subject, args.lengths, args.depths, n_needles=args.needles, haystack=hay, seed=args.seed,
                         kinds=args.kinds.split(","), min_answer_tokens=args.min_answer_tokens)
        start = time.time()
        runs = run_niah_grid(subject, grid, folder, {"intact": []}, record=True, resume=True,
                             max_new_tokens=args.max_new_tokens, batch_size=args.batch)
        print(f"{name}: {len(grid)} tests, accuracy {runs['intact'].accuracy:.3f}, {time.time() - start:.0f} s",
              flush=True)
        folders[name] = folder
    return folders


def analyze(folders: dict[str, Path], boot: Bootstrap) -> dict:
    """Per haystack: overall and per-family scores with intervals; Spearman between haystacks and between families."""
    items = {name: load_niah(folder)["intact"] for name, folder in folders.items()}
    scores, summary = {}, {"haystacks": {}, "between_haystacks": [], "between_families": []}
    for name, run in items.items():
        families = list(dict.fromkeys(run.table["kind"]))
        entry = {"tests": len(run.table), "accuracy": round(run.accuracy, 3),
                 "accuracy_by_family": run.table.groupby("kind")["correct"].mean().round(3).to_dict()}
        for key, kind in [("all", None)] + [(k, k) for k in families]:
            it = run.retrieval_items(kind)
            mean = it.mean()
            scores[(name, key)] = mean
            found = it.interval(boot)
            width = float(np.nanmedian((found[1] - found[0])[mean > RETRIEVAL_THRESHOLD])) if found and \
                (mean > RETRIEVAL_THRESHOLD).any() else float("nan")
            entry[key] = {"items": it.n_items, "heads_above": int((mean > RETRIEVAL_THRESHOLD).sum()),
                          "median_interval_width_above": round(width, 3)}
        summary["haystacks"][name] = entry
    names = list(items)
    for a, b in combinations(names, 2):
        summary["between_haystacks"].append({"pair": [a, b], **_rounded(agreement(
            scores[(a, "all")], scores[(b, "all")], RETRIEVAL_THRESHOLD))})
    for name in names:
        fams = [k for (n, k) in scores if n == name and k != "all"]
        for f, g in combinations(fams, 2):
            summary["between_families"].append({"haystack": name, "pair": [f, g], **_rounded(agreement(
                scores[(name, f)], scores[(name, g)], RETRIEVAL_THRESHOLD))})
    pooled = {k: np.nanmean([scores[(n, k)] for n in names if (n, k) in scores], axis=0)
              for k in {k for (_, k) in scores if k != "all"}}
    summary["between_families_pooled"] = [{"pair": [f, g], **_rounded(agreement(pooled[f], pooled[g],
                                                                                 RETRIEVAL_THRESHOLD))}
                                          for f, g in combinations(sorted(pooled), 2)]
    top = {name: _top(scores[(name, "all")]) for name in names}
    summary["top5"] = top
    return summary


def _top(m: np.ndarray, k: int = 5) -> list[str]:
    order = np.argsort(-np.nan_to_num(m, nan=-1).ravel(), kind="stable")[:k]
    return [f"L{i // m.shape[1]}H{i % m.shape[1]} {m.ravel()[i]:.2f}" for i in order]


def _rounded(d: dict) -> dict:
    return {k: (round(v, 3) if isinstance(v, float) else v) for k, v in d.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--haystacks", default="noise,random")
    parser.add_argument("--kinds", default=",".join(FAMILIES))
    parser.add_argument("--needles", type=int, default=8)
    parser.add_argument("--min-answer-tokens", type=int, default=4)
    parser.add_argument("--lengths", type=lambda s: [int(x) for x in s.split(",")], default=[256, 512])
    parser.add_argument("--depths", type=lambda s: [float(x) for x in s.split(",")], default=[0, 50, 100])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--batch", type=int, default=6)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default="runs/retrieval-stability")
    parser.add_argument("--analyze", nargs="*", default=None, help="only analyse these NIAH folders (name = folder name)")
    args = parser.parse_args()
    folders = ({Path(f).name: Path(f) for f in args.analyze} if args.analyze is not None else run(args))
    summary = analyze(folders, Bootstrap(seed=args.seed))
    text = json.dumps(summary, indent=1)
    print(text)
    if args.analyze is None:
        (Path(args.out) / "summary.json").write_text(text + "\n")


if __name__ == "__main__":
    main()
