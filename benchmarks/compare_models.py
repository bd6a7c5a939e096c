"""Compare the atlases of several models by normalised depth: merge each model's atlas folders (scan, niah,
episodic, long-range ...) into one Atlas, then print the head-type table and write figures.

    PYTHONPATH=. python benchmarks/compare_models.py \
        --atlas smollm2-135m=runs/smollm2-scan,runs/smollm2-niah,runs/smollm2-episodic \
        --atlas gemma3-270m=runs/gemma3-scan,runs/gemma3-niah,runs/gemma3-episodic \
        --out runs/compare [--save-merged data/atlases]

Writes ``comparison.md`` (head-type table, overlaps), ``summary.csv`` and ``compare.html`` (figures) into --out;
with --save-merged, each model's merged Atlas into <dir>/<model>/ (atlas.parquet + atlas.json).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from workbench.atlas import Atlas
from workbench.comparison import compare_atlases
from workbench.io import atomic_write_text
from workbench.viz import write_report

PROFILE_COLUMNS = ["induction", "retrieval", "cmr_distance", "sink_rate", "long_range"]
OVERLAPS = [("retrieval", "induction"), ("induction", "retrieval"), ("induction", "cmr_like"),
            ("cmr_like", "induction"), ("sink", "induction")]


def merged(folders: list[str]) -> Atlas:
    """The atlases in ``folders`` merged left to right (later columns replace same-named earlier ones)."""
    atlas = Atlas.load(folders[0])
    for folder in folders[1:]:
        atlas = atlas.merge(Atlas.load(folder))
    return atlas


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--atlas", action="append", required=True, help="NAME=DIR[,DIR...] (repeat per model)")
    ap.add_argument("--out", default="runs/compare")
    ap.add_argument("--save-merged", default=None)
    args = ap.parse_args()
    atlases = {}
    for spec in args.atlas:
        name, _, dirs = spec.partition("=")
        atlases[name] = merged([d for d in dirs.split(",") if d])
        if args.save_merged:
            atlases[name].save(Path(args.save_merged) / name)
    c = compare_atlases(atlases)
    lines = ["# Head types by normalised depth", "", c.markdown(), "## Overlaps", ""]
    for a, b in OVERLAPS:
        try:
            o = c.overlap(a, b)
        except Exception:  # a type not measured in these atlases
            continue
        lines.append(f"- {a} heads that are also {b}: " + "; ".join(
            f"{m} {int(r.n_both)}/{int(r.n_a)}" for m, r in o.iterrows()))
    of_type = {m: a.table["layer_type"].value_counts() for m, a in atlases.items()}  # heads per layer type
    mixed = c.heads["model"].map({m: len(v) > 1 for m, v in of_type.items()})  # models with local and global layers
    if mixed.any():
        lines += ["", "## By layer type (models with local and global layers)", ""]
        split = c.heads[mixed].groupby(["model", "head_type", "layer_type"]).size().unstack(fill_value=0)
        for (model, head_type), row in split.iterrows():
            lines.append(f"- {model} {head_type}: " + ", ".join(
                f"{n} of {of_type[model][lt]} heads in {lt} layers" for lt, n in row.items()))
    text = "\n".join(lines) + "\n"
    out = Path(args.out)
    atomic_write_text(out / "comparison.md", text)
    atomic_write_text(out / "summary.csv", c.summary.to_csv(index=False))
    columns = [col for col in PROFILE_COLUMNS if col in set(c.profiles["column"])]
    figures = [c.figure()] + ([c.profile_figure(columns, "mean"), c.profile_figure(columns, "max")] if columns else [])
    write_report(out / "compare.html", "Atlas comparison: " + " vs ".join(c.models),
                 [("Head types", [text]), ("Figures", figures)], {"models": ", ".join(c.models)})
    print(text)
    print(f"report: {out / 'compare.html'}")


if __name__ == "__main__":
    main()
