"""Test-retest of the Atlas scores over stimulus seeds (issue 19; docs/error-bars.md).

Scans the model K times (seeds 0..K-1) with ``workbench.replicates.scan_replicates`` and prints, per score,
the Spearman between replicates (all heads; heads past the paper's threshold) and the heads whose class flips,
plus the median bootstrap interval width. Same numbers as ``workbench scan --replicates K`` (atlas.json).

    PYTHONPATH=. python benchmarks/test_retest.py --replicates 3 --out runs/test-retest
    PYTHONPATH=. python benchmarks/test_retest.py --detectors retrieval --out runs/test-retest-retrieval
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np


def main() -> None:
    import torch

    import workbench as wb
    from workbench.detectors import DEFAULT_DETECTORS
    from workbench.replicates import scan_replicates

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--detectors", default=",".join(DEFAULT_DETECTORS))
    parser.add_argument("--replicates", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default="runs/test-retest")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    subject = wb.load(args.model, device=args.device)
    start = time.time()
    rep = scan_replicates(subject, args.replicates, detectors=args.detectors)
    out = Path(args.out)
    rep.atlas.save(out)
    widths = {}
    for name in rep.atlas.score_columns:
        bounds = rep.atlas.interval(name)
        if bounds is not None:
            widths[name] = round(float(np.nanmedian(bounds[1] - bounds[0])), 4)
    summary = {"model": args.model, "seeds": rep.seeds, "wall_s": round(time.time() - start, 1),
               "median_interval_width_seed0": widths,
               "retest": {k: {f: v[f] for f in v if f not in ("pairs", "flips")} | {"flipped_heads": list(v.get("flips", {}))}
                          for k, v in rep.retest.items()}}
    text = json.dumps(summary, indent=1)
    print(text)
    (out / "summary.json").write_text(text + "\n")


if __name__ == "__main__":
    main()
