"""Views: plotly figures over per-head arrays and attention patterns, and the self-contained HTML report."""

from .heads import (estimate_scatter, format_interval, format_value, head_heatmap, interval_figure, pattern_figure,
                    top_table)
from .report import write_report

__all__ = ["estimate_scatter", "format_interval", "format_value", "head_heatmap", "interval_figure", "pattern_figure",
           "top_table", "write_report"]
