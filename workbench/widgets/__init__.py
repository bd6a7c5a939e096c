"""JupyterLab dashboards over the library: HeadExplorer (Atlas + patterns), AblationPlayground, SweepViewer.

They compute nothing themselves: they call capture, interventions.apply and the Atlas, and show
workbench.viz figures in plotly FigureWidgets (plotly.js bundled with the plotly package, no CDN).
"""

from .ablation_playground import AblationPlayground, parse_heads
from .head_explorer import HeadExplorer
from .sweep_viewer import SweepViewer

__all__ = ["AblationPlayground", "HeadExplorer", "SweepViewer", "parse_heads"]
