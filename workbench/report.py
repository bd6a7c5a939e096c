"""The scan's HTML report: the Atlas's figures plus the attention of each top head on a short example."""

from __future__ import annotations

from pathlib import Path

from .patterns import capture
from .stimuli import repeated_random_tokens
from .viz.heads import pattern_figure

EXAMPLE_COLUMNS = ("induction", "previous_token", "duplicate_token", "copying", "sink_mass")


def example_patterns(subject, atlas, seed: int = 0, columns=EXAMPLE_COLUMNS) -> dict:
    """For each score column present, the top head's pattern on BOS + 20 random tokens x 2 (one capture)."""
    stim = repeated_random_tokens(subject, seq_len=20, n_repeats=2, batch=1, seed=seed + 7)
    tops = {c: atlas.top(c, 1).iloc[0] for c in columns if c in atlas.score_columns}
    if not tops:
        return {}
    heads = sorted({(int(r["layer"]), int(r["head"])) for r in tops.values()})
    cap = capture(subject, stim.input_ids, heads=heads)
    tokens = subject.to_str_tokens(stim.input_ids[0])
    figures = {}
    for column, row in tops.items():
        layer, head = int(row["layer"]), int(row["head"])
        title = f"L{layer}H{head}, the top {column} head ({row[column]:.2f}), on BOS + 20 random tokens x 2"
        figures[f"pattern_{column}"] = pattern_figure(cap.pattern(layer, head)[0].numpy(), tokens, title)
    return figures


def write_scan_report(atlas, subject, path: str | Path, seed: int = 0) -> Path:
    """Write the self-contained HTML report of a scan and return its path."""
    notes = (f"{subject.weights_note or subject.name}. Scores follow METHODS.md; each column's definition, "
             "source and range are listed with its figure. Attention patterns below: rows are queries, "
             "columns keys.")
    return atlas.to_html(path, title=f"Head atlas: {subject.name}", extra_figures=example_patterns(subject, atlas, seed),
                         notes=notes)
