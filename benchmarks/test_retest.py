"""Test-retest of the Atlas scores over stimulus seeds (issue 19; docs/error-bars.md).

Scans the model K times (seeds 0..K-1) with ``workbench.replicates.scan_replicates`` (or reads saved
atlases with --analyze) and prints, per score, the Spearman between replicates (all heads; heads past the
paper's threshold), the heads whose class flips, and the median bootstrap interval width. Same numbers as
``workbench scan --replicates K`` (atlas.json, key test_retest).

    PYTHONPATH=. python benchmarks/test_retest.py --replicates 3 --out runs/test-retest
    PYTHONPATH=. python benchmarks/test_retest.py --analyze runs/tr-0 runs/tr-1 runs/tr-2 --out runs/test-retest
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np


def summarize(atlases, retest: dict) -> dict:
    """Per score: the test-retest summary without the per-pair details, and the median interval width per replicate."""
    widths = {}
    for name in atlases[0].score_columns:
        found = [a.interval(name) for a in atlases if name in a.score_columns]
        if found and all(f is not None for f in found):
            widths[name] = [round(float(np.nanmedian(hi - lo)), 4) for lo, hi in found]
    return {"seeds": [a.meta.get("seed") for a in atlases], "median_interval_width": widths,
            "retest": {k: {f: v[f] for f in v if f not in ("pairs", "flips")} | {"flipped_heads": list(v.get("flips", {}))}
                       for k, v in retest.items()}}


def main() -> None:
    from workbench.atlas import Atlas
    from workbench.detectors import DEFAULT_DETECTORS
    from workbench.replicates import retest

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--detectors", default=",".join(DEFAULT_DETECTORS))
    parser.add_argument("--replicates", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default="runs/test-retest")
    parser.add_argument("--analyze", nargs="*", default=None, help="only compare these saved atlas folders")
    args = parser.parse_args()
    out = Path(args.out)
    start = time.time()
    if args.analyze is not None:
        atlases = [Atlas.load(f) for f in args.analyze]
    else:
        import torch

        import workbench as wb
        from workbench.replicates import scan_replicates

        torch.set_num_threads(args.threads)
        subject = wb.load(args.model, device=args.device)
        rep = scan_replicates(subject, args.replicates, detectors=args.detectors, out=out / "replicates")
        rep.atlas.save(out)
        atlases = rep.atlases
    summary = {"model": atlases[0].meta.get("model"), **summarize(atlases, retest(atlases)),
               "wall_s": round(time.time() - start, 1)}
    text = json.dumps(summary, indent=1)
    print(text)
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(text + "\n")


if __name__ == "__main__":
    main()
