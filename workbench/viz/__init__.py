"""Views: plotly figures over per-head arrays and attention patterns, and the self-contained HTML report."""

from .heads import format_interval, format_value, head_heatmap, interval_figure, pattern_figure, top_table
from .report import write_report

__all__ = ["format_interval", "format_value", "head_heatmap", "interval_figure", "pattern_figure", "top_table",
           "write_report"]
