"""The Atlas: one row per (layer, head), one float column per score, plus the run's metadata.

Every analysis writes its per-head numbers here and every view reads them from here. An Atlas is
immutable: ``with_scores``, ``with_meta`` and ``merge`` return new ones. On disk it is
``atlas.parquet`` (the table) next to ``atlas.json`` (the metadata), both written atomically.

A score column ``x`` may carry a confidence interval: the columns ``x_lo`` and ``x_hi`` beside it, and
``meta["columns"]["x"]["interval"]`` saying how it was computed (method, what an item is, items,
resamples, level, seed; ``workbench.scores.intervals``). Intervals exist only where the score had
per-item values; a column without them has no bounds.
"""

from __future__ import annotations

import html
import json
from pathlib import Path

import numpy as np
import pandas as pd

from .errors import InputError
from .io import atomic_write, atomic_write_json
from .scores.intervals import Bootstrap, ItemScores

ID_COLUMNS = ("layer", "head", "kv_group", "layer_type")
TABLE_FILE, META_FILE = "atlas.parquet", "atlas.json"
BOUNDS = ("_lo", "_hi")  # suffixes of a score's interval columns


def _jsonable(meta: dict) -> dict:
    """``meta`` as it reads back from JSON (numpy to Python numbers, tuples to lists); InputError if it cannot be."""
    if not isinstance(meta, dict):
        raise InputError(f"Atlas metadata must be a dict, got {type(meta).__name__}")

    def convert(obj):
        if isinstance(obj, (np.generic, np.ndarray)):
            return obj.tolist()
        if isinstance(obj, Path):
            return str(obj)
        raise InputError(f"Atlas metadata must be JSON-serialisable, but holds a {type(obj).__name__} "
                         f"({str(obj)[:60]!r}): store it as a string, number, list or dict")

    return json.loads(json.dumps(meta, default=convert))


class Atlas:
    """Per-head scores of one model (rows (layer, head), query-head numbering) with the run's metadata."""

    def __init__(self, table: pd.DataFrame, meta: dict):
        if not isinstance(table, pd.DataFrame):
            raise InputError(f"an Atlas table must be a pandas DataFrame, got {type(table).__name__}")
        missing = [c for c in ID_COLUMNS if c not in table.columns]
        if missing:
            raise InputError(f"the Atlas table lacks column(s) {', '.join(missing)}: it needs {', '.join(ID_COLUMNS)} "
                             "(Atlas.for_model builds them)")
        if table.empty:
            raise InputError("the Atlas table has no rows: it needs one row per (layer, head)")
        table = table.copy()
        for c in ("layer", "head", "kv_group"):
            table[c] = _integers(table[c], c)
        if table["layer_type"].isna().any():
            raise InputError("layer_type has missing values: give each layer's type, e.g. 'full' or 'sliding'")
        table["layer_type"] = table["layer_type"].astype("str")
        scores = [c for c in table.columns if c not in ID_COLUMNS]
        for c in scores:
            table[c] = _floats(table[c], c)
        dup = table.duplicated(["layer", "head"])
        if dup.any():
            first = table[dup].iloc[0]
            raise InputError(f"head L{first['layer']}H{first['head']} appears twice: an Atlas has one row per (layer, head)")
        self.meta = _jsonable(meta)
        for name, col in self.meta.get("columns", {}).items():
            missing = [name + b for b in BOUNDS if isinstance(col, dict) and col.get("interval") and name + b not in scores]
            if missing:
                raise InputError(f"the metadata gives column {name!r} an interval but the table lacks {', '.join(missing)}: "
                                 "add both bounds or drop 'interval' from its description")
        self.n_layers = int(self.meta.get("n_layers", table["layer"].max() + 1))
        self.n_heads = int(self.meta.get("n_heads", table["head"].max() + 1))
        if table["layer"].min() < 0 or table["layer"].max() >= self.n_layers or table["head"].min() < 0 \
                or table["head"].max() >= self.n_heads:
            raise InputError(f"layer or head index out of range: the metadata says {self.n_layers} layers x "
                             f"{self.n_heads} heads, numbered from 0")
        self.table = (table[list(ID_COLUMNS) + self._ordered(scores)].sort_values(["layer", "head"], kind="stable")
                      .reset_index(drop=True))

    def _ordered(self, columns: list[str]) -> list[str]:
        """Value columns with each score's bounds right after it."""
        bounds = {c for c in columns if self._bound_of(c)}
        out = []
        for c in columns:
            if c not in bounds:
                out += [c] + [c + b for b in BOUNDS if c + b in bounds]
        return out + [c for c in columns if c in bounds and c not in out]

    def _bound_of(self, column: str) -> str | None:
        """The score whose interval bound ``column`` is (per the metadata), else None."""
        for b in BOUNDS:
            base = column[:-len(b)]
            if column.endswith(b) and (self.meta.get("columns", {}).get(base) or {}).get("interval"):
                return base
        return None

    @classmethod
    def for_model(cls, n_layers: int, n_heads: int, n_kv_heads: int, layer_types: list[str], meta: dict) -> "Atlas":
        """An Atlas with every (layer, head) of a model, its KV group and layer type, and no scores yet."""
        if min(n_layers, n_heads, n_kv_heads) < 1 or n_heads % n_kv_heads:
            raise InputError(f"cannot lay out {n_layers} layers x {n_heads} heads with {n_kv_heads} KV heads: "
                             "all must be positive and the KV heads must divide the query heads")
        if len(layer_types) != n_layers:
            raise InputError(f"layer_types has {len(layer_types)} entries for {n_layers} layers: give one per layer")
        shape = {"n_layers": n_layers, "n_heads": n_heads, "n_kv_heads": n_kv_heads}
        clash = {k: meta[k] for k in shape if k in meta and meta[k] != shape[k]}
        if clash:
            raise InputError(f"meta says {clash} but the Atlas is laid out as {shape}: drop or fix those keys")
        layer, head = np.divmod(np.arange(n_layers * n_heads), n_heads)
        table = pd.DataFrame({"layer": layer, "head": head, "kv_group": head // (n_heads // n_kv_heads),
                              "layer_type": [str(layer_types[l]) for l in layer]})
        return cls(table, {**meta, **shape})

    @property
    def score_columns(self) -> list[str]:
        """The score columns: every column except layer, head, kv_group, layer_type and the interval bounds."""
        return [c for c in self.table.columns if c not in ID_COLUMNS and not self._bound_of(c)]

    def _column(self, name: str) -> pd.Series:
        if name not in self.table.columns or name in ID_COLUMNS:
            raise InputError(f"no score column {name!r} in this Atlas: choose from "
                             f"{', '.join(self.score_columns) or '(none yet: add one with with_scores)'}")
        return self.table[name]

    def interval(self, name: str) -> tuple[np.ndarray, np.ndarray] | None:
        """Score ``name``'s interval as (lo, hi) (n_layers, n_heads) arrays, or None where it has none."""
        self._column(name)
        if not self.interval_info(name):
            return None
        return self.matrix(name + BOUNDS[0]), self.matrix(name + BOUNDS[1])

    def interval_info(self, name: str) -> dict | None:
        """How score ``name``'s interval was computed (method, unit, items, resamples, level, seed), or None."""
        return (self.meta.get("columns", {}).get(name) or {}).get("interval")

    def with_scores(self, name: str, values, *, definition: str, source: str, range: str, lo=None, hi=None,
                    interval: dict | None = None, bootstrap: Bootstrap | None = Bootstrap()) -> "Atlas":
        """A new Atlas with score column ``name`` from an (n_layers, n_heads) array, a (layer, head) Series, or ItemScores (mean, and a bootstrap interval).

        ``values`` as ``ItemScores`` (per-item values, ``workbench.scores.intervals``): the score is their
        weighted mean and, unless ``bootstrap`` is None, its interval becomes ``name_lo`` / ``name_hi``.
        Or give ``lo`` and ``hi`` (same layout as ``values``) with ``interval``, a dict saying how they were
        computed. Otherwise the column has no interval (any old bounds of ``name`` are dropped).
        """
        if not isinstance(name, str) or not name or name in ID_COLUMNS:
            raise InputError(f"a score column needs a new non-empty name other than {', '.join(ID_COLUMNS)}, got {name!r}")
        if self._bound_of(name):
            raise InputError(f"{name!r} is the interval bound of score {self._bound_of(name)!r}: pass lo= and hi= "
                             "to with_scores of that score instead")
        described = {"definition": definition, "source": source, "range": range}
        empty = [k for k, v in described.items() if not isinstance(v, str) or not v.strip()]
        if empty:
            raise InputError(f"column {name!r} needs a one-line {' and '.join(empty)} (a string) for the metadata")
        if isinstance(values, ItemScores):
            if lo is not None or hi is not None:
                raise InputError(f"give column {name!r} either ItemScores (its interval is bootstrapped) or lo/hi, not both")
            found = values.interval(bootstrap) if bootstrap is not None else None
            if found is not None:
                lo, hi, interval = found
            else:
                described["no_interval"] = ("not computed (bootstrap off)" if bootstrap is None else
                                            f"fewer than 2 items ({values.n_items} {values.unit})")
            values = values.mean()
        if (lo is None) != (hi is None) or (lo is not None and not isinstance(interval, dict)):
            raise InputError(f"an interval for {name!r} needs both lo and hi, and interval= a dict saying how they "
                             "were computed (method, level, items...)")
        table = self.table.drop(columns=[name + b for b in BOUNDS if name + b in self.table.columns])
        table[name] = self._aligned(name, values)
        if lo is not None:
            low, high = self._aligned(name + BOUNDS[0], lo), self._aligned(name + BOUNDS[1], hi)
            if (low > high).any():
                raise InputError(f"the interval of {name!r} has lo > hi for some heads: pass (lower, upper) bounds")
            table[name + BOUNDS[0]], table[name + BOUNDS[1]] = low, high
            described["interval"] = {**interval, "lo": name + BOUNDS[0], "hi": name + BOUNDS[1]}
        meta = {**self.meta, "columns": {**self.meta.get("columns", {}), name: described}}
        return Atlas(table, meta)

    def _aligned(self, name: str, values) -> np.ndarray:
        """``values`` as one float per table row, in table order."""
        if isinstance(values, pd.Series):
            if values.index.nlevels != 2 or values.index.has_duplicates:
                raise InputError(f"the Series for {name!r} must be indexed by unique (layer, head) pairs "
                                 "(a 2-level MultiIndex)")
            rows = pd.MultiIndex.from_frame(self.table[["layer", "head"]])
            unknown = values.index.difference(rows)
            if len(unknown):
                raise InputError(f"the Series for {name!r} has heads this Atlas lacks, e.g. {list(unknown[:3])}: "
                                 f"layers run 0..{self.n_layers - 1} and heads 0..{self.n_heads - 1}")
            return _floats(values.set_axis(values.index.set_names(["layer", "head"])).reindex(rows), name).to_numpy()
        try:
            array = np.asarray(values, dtype=np.float64)
        except (TypeError, ValueError) as e:
            raise InputError(f"scores for {name!r} must be numbers (a numpy array on the CPU): {e}") from None
        expected = (self.n_layers, self.n_heads)
        if array.shape != expected:
            hint = " (heads x layers? pass values.T)" if array.shape == expected[::-1] else ""
            raise InputError(f"scores for {name!r} have shape {array.shape}{hint}; this Atlas needs shape {expected}, "
                             "layers as rows and heads as columns, or a Series indexed by (layer, head)")
        return array[self.table["layer"].to_numpy(), self.table["head"].to_numpy()]

    def with_meta(self, **updates) -> "Atlas":
        """A new Atlas whose metadata has ``updates`` applied (column descriptions come only from with_scores)."""
        if "columns" in updates:
            raise InputError("column descriptions are set by with_scores(name, values, definition=..., source=..., "
                             "range=...), not with_meta")
        return Atlas(self.table, {**self.meta, **updates})

    def merge(self, other: "Atlas") -> "Atlas":
        """A new Atlas with ``other``'s score columns (replacing same-named ones) and their descriptions added."""
        if not isinstance(other, Atlas):
            raise InputError(f"merge takes another Atlas, got {type(other).__name__}")
        mine, theirs = self.meta.get("model"), other.meta.get("model")
        if mine is not None and theirs is not None and mine != theirs:
            raise InputError(f"cannot merge an Atlas of {theirs!r} into one of {mine!r}: both must be of the same model")
        ids = list(ID_COLUMNS)
        if (self.n_layers, self.n_heads) != (other.n_layers, other.n_heads) or not self.table[ids].equals(other.table[ids]):
            raise InputError("cannot merge: the two atlases have different heads (layers, heads, KV groups or layer "
                             f"types differ: {self.n_layers}x{self.n_heads} vs {other.n_layers}x{other.n_heads}); "
                             "merge atlases of the same model only")
        table = self.table.drop(columns=[c + b for c in other.score_columns for b in BOUNDS
                                         if c + b in self.table.columns and self._bound_of(c + b)])
        for name in other.table.columns.drop(list(ID_COLUMNS)):  # rows align: same heads, both sorted by (layer, head)
            table[name] = other.table[name].to_numpy()
        run = {k: v for k, v in other.meta.items() if k not in ("columns", "merged_from")}
        meta = {**self.meta, "columns": {**self.meta.get("columns", {}), **other.meta.get("columns", {})},
                "merged_from": [*self.meta.get("merged_from", []), *other.meta.get("merged_from", []), run]}
        return Atlas(table, meta)

    def matrix(self, name: str) -> np.ndarray:
        """Score ``name`` as an (n_layers, n_heads) array (row = layer, column = head), NaN where missing."""
        column = self._column(name)
        out = np.full((self.n_layers, self.n_heads), np.nan)
        out[self.table["layer"].to_numpy(), self.table["head"].to_numpy()] = column.to_numpy()
        return out

    def top(self, name: str, k: int = 10, ascending: bool = False) -> pd.DataFrame:
        """The ``k`` heads with the highest (or lowest) ``name``, NaN excluded; ties by (layer, head)."""
        column = self._column(name)
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise InputError(f"k must be a positive integer, got {k!r}")
        ranked = self.table[column.notna()].sort_values([name, "layer", "head"], ascending=[ascending, True, True],
                                                        kind="stable")
        mine = [name] + [name + b for b in BOUNDS if self._bound_of(name + b)]
        order = list(ID_COLUMNS) + mine + [c for c in self.table.columns if c not in ID_COLUMNS and c not in mine]
        return ranked[order].head(int(k)).reset_index(drop=True)

    def heads(self, name: str, threshold: float, above: bool = True, confident: bool = False) -> list[tuple[int, int]]:
        """Heads with ``name`` >= threshold (or <= when above=False), strongest first, NaN excluded; ``confident``: the whole interval past it."""
        column = self._column(name)
        if confident:
            if not self.interval_info(name):
                raise InputError(f"score {name!r} has no interval, so confident=True cannot be judged: leave it False")
            column = self.table[name + (BOUNDS[0] if above else BOUNDS[1])]
        chosen = self.table[column >= threshold] if above else self.table[column <= threshold]
        chosen = chosen.sort_values([name, "layer", "head"], ascending=[not above, True, True], kind="stable")
        return [(int(l), int(h)) for l, h in zip(chosen["layer"], chosen["head"])]

    def save(self, out_dir: str | Path) -> Path:
        """Write ``out_dir/atlas.parquet`` (table) and ``out_dir/atlas.json`` (metadata) atomically; return out_dir."""
        out_dir = Path(out_dir)
        if out_dir.suffix in (".parquet", ".json") or out_dir.is_file():
            raise InputError(f"save takes a folder, got {out_dir}: it writes {TABLE_FILE} and {META_FILE} inside it")
        atomic_write(out_dir / TABLE_FILE, lambda p: self.table.to_parquet(p, index=False))
        atomic_write_json(out_dir / META_FILE, self.meta)
        return out_dir

    @classmethod
    def load(cls, path: str | Path) -> "Atlas":
        """Read an Atlas from a folder written by ``save`` (or its .parquet path, with the .json beside it)."""
        path = Path(path)
        if path.suffix in (".parquet", ".json"):
            table_path, meta_path = path.with_suffix(".parquet"), path.with_suffix(".json")
        else:
            table_path, meta_path = path / TABLE_FILE, path / META_FILE
        for p in (table_path, meta_path):
            if not p.is_file():
                raise InputError(f"cannot load an Atlas from {path}: {p} is missing (Atlas.save(folder) writes "
                                 f"{TABLE_FILE} and {META_FILE} there)")
        try:
            table = pd.read_parquet(table_path)
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise InputError(f"cannot read the Atlas in {path} ({e}): write it again with Atlas.save") from None
        return cls(table, meta)

    def plot(self, columns: list[str] | None = None, k: int = 10) -> dict:
        """Per score: a layer x head heatmap (hover: head, KV group, all scores) and a "top_<name>" table of k heads."""
        from .viz.heads import head_heatmap, interval_figure, top_table

        columns = self.score_columns if columns is None else [columns] if isinstance(columns, str) else list(columns)
        for name in columns:
            self._column(name)  # unknown names fail before any figure is built
        hover = np.full((self.n_layers, self.n_heads), "", dtype=object)
        for row in self.table.to_dict("records"):
            lines = [f"KV group {row['kv_group']}, {row['layer_type']} attention"]
            lines += [f"{c}: {self._value_text(row, c)}" for c in self.score_columns]
            hover[row["layer"], row["head"]] = "<br>".join(lines)
        model = f" ({self.meta['model']})" if self.meta.get("model") else ""
        figures = {}
        for name in columns:
            m = self.matrix(name)
            finite = m[np.isfinite(m)]
            diverging = finite.size > 0 and finite.min() < 0 < finite.max()  # both signs: centre the colours on 0
            figures[name] = head_heatmap(m, f"{name}{model}", "RdBu_r" if diverging else "Viridis",
                                         zmid=0.0 if diverging else None, hover=hover, colorbar_title=name)
            bounds = [name + b for b in BOUNDS] if self.interval_info(name) else []
            top = self.top(name, k)[list(ID_COLUMNS) + [name] + bounds]
            figures[f"top_{name}"] = top_table(top, f"top {min(k, len(top))} heads by {name}")
            if bounds and len(top):
                info = self.interval_info(name)
                figures[f"interval_{name}"] = interval_figure(
                    [f"L{r['layer']}H{r['head']}" for r in top.to_dict("records")], top[name], top[bounds[0]],
                    top[bounds[1]], f"top {len(top)} heads by {name}, {_interval_text(info)}", name)
        return figures

    def _value_text(self, row, name: str) -> str:
        """'0.52 [0.48, 0.56]' (value and interval) or '0.52' for a table row."""
        from .viz.heads import format_interval, format_value

        if not self.interval_info(name):
            return format_value(row[name])
        return f"{format_value(row[name])} {format_interval(row[name + BOUNDS[0]], row[name + BOUNDS[1]])}"

    def _description(self, name: str) -> str:
        """The column's definition, source and range as one paragraph."""
        col = self.meta.get("columns", {}).get(name)
        if not col:
            return f"{name}: no description recorded."
        text = " ".join(f"{label}{col.get(key, 'not recorded').rstrip('.')}." for label, key in
                        (("", "definition"), ("Source: ", "source"), ("Range: ", "range")))
        if col.get("interval"):
            return f"{text} Interval ({name}_lo, {name}_hi): {_interval_text(col['interval'])}."
        return f"{text} No interval: {col.get('no_interval', 'no per-item values behind this score')}."

    def to_html(self, path: str | Path, title: str | None = None, extra_figures: dict | None = None,
                notes: str | None = None) -> Path:
        """Write a self-contained HTML report: metadata, then each score's definition, heatmap and top table."""
        from .viz.report import write_report

        figures = self.plot()
        sections = [("Notes", notes)] if notes else []
        sections += [(name, [self._description(name), figures[name], figures[f"top_{name}"]]
                      + ([figures[f"interval_{name}"]] if f"interval_{name}" in figures else []))
                     for name in self.score_columns]
        if self.meta.get("test_retest"):
            from .viz.heads import top_table

            seeds = self.meta.get("replicate_seeds", [])
            sections.append(("Test-retest", [
                f"The scan was repeated with stimulus seeds {seeds}; per score, the Spearman correlation between "
                "replicates over all heads (mean and minimum over pairs), over the heads past the paper's threshold "
                "in either replicate, how many heads are past it in each replicate, and the heads whose class "
                "flips between replicates (their scores per replicate in atlas.json, key test_retest). "
                + self.meta.get("test_retest_note", ""), top_table(_retest_frame(self.meta["test_retest"]))]))
        if extra_figures:
            sections.append(("More figures", list(extra_figures.values())))
        title = title or f"Head atlas: {self.meta.get('model', 'unnamed model')}"
        return write_report(path, title, sections, self.meta)

    def _repr_html_(self) -> str:
        """A compact notebook view: model, head counts, weights note, and the top 3 heads of each score."""
        kv = self.meta.get("n_kv_heads", self.table["kv_group"].nunique())
        head = (f"<b>Atlas</b> of {html.escape(str(self.meta.get('model', 'an unnamed model')))}: "
                f"{self.n_layers} layers x {self.n_heads} query heads ({kv} KV heads), {len(self.table)} rows")
        note = self.meta.get("weights_note")
        rows = []
        for name in self.score_columns:
            top = self.top(name, 3)
            best = ", ".join(f"L{r['layer']}H{r['head']} {self._value_text(r, name)}" for r in top.to_dict("records"))
            rows.append(f"<tr><td>{html.escape(name)}</td><td>{html.escape(best or 'all NaN')}</td></tr>")
        table = ("<table><tr><th>score</th><th>top 3 heads</th></tr>" + "".join(rows) + "</table>") if rows \
            else "<p>No score columns yet.</p>"
        return f"<div>{head}<br>{'<i>' + html.escape(note) + '</i>' if note else ''}{table}</div>"

    def __repr__(self) -> str:
        return (f"Atlas({self.meta.get('model', 'unnamed')!r}: {self.n_layers} layers x {self.n_heads} heads, "
                f"scores {self.score_columns})")


def _interval_text(info: dict) -> str:
    """How an interval was computed, in words: '95% expanded percentile bootstrap over 10 sequences, 1000 resamples, seed 0'."""
    level = info.get("level")
    level = f"{100 * level:g}% " if isinstance(level, (int, float)) else ""
    return (f"{level}{info.get('method', 'interval')} over {info.get('items', '?')} {info.get('unit', 'items')}, "
            f"{info.get('resamples', '?')} resamples, seed {info.get('seed', '?')}")


def _retest_frame(retest: dict) -> pd.DataFrame:
    """The test-retest summary (``workbench.replicates.retest``) as one row per score."""
    rows = []
    for name, e in retest.items():
        flips = list(e.get("flips", {}))
        threshold = f"{'>' if e.get('direction') == 'above' else '<'} {e['threshold']:g}" if "threshold" in e else ""
        rows.append({"score": name, "spearman mean": e.get("spearman_mean"), "spearman min": e.get("spearman_min"),
                     "spearman past threshold": e.get("spearman_past_mean"), "threshold": threshold,
                     "heads past it": " / ".join(map(str, e.get("n_past", []))),
                     "class flips": (f"{len(flips)}: " + ", ".join(flips[:12]) + (" ..." if len(flips) > 12 else ""))
                     if "threshold" in e else ""})
    return pd.DataFrame(rows)


def _integers(column: pd.Series, name: str) -> pd.Series:
    """``column`` as int64; InputError if any value is missing or not a whole number."""
    try:
        ints = column.astype("int64")
    except (TypeError, ValueError):
        raise InputError(f"column {name!r} must hold whole numbers with no gaps") from None
    if not (ints == column).all():
        raise InputError(f"column {name!r} must hold whole numbers, got e.g. {column[ints != column].iloc[0]!r}")
    return ints


def _floats(column: pd.Series, name: str) -> pd.Series:
    """``column`` as float64 (missing values as NaN); InputError if it is not numeric."""
    if not (pd.api.types.is_numeric_dtype(column) or column.isna().all()):
        raise InputError(f"score column {name!r} must be numeric, got dtype {column.dtype}: "
                         "scores are floats (NaN where not measured)")
    return column.astype("float64")
