"""Capture of attention: exact patterns for short contexts, streamed statistics for long ones."""

from .capture import (Capture, PatternRecorder, PatternReducer, ZRecorder, capture, predict_capture,
                      select_heads)
from .memory import Budget, ModelDims, Prediction
from .stats import StatsCapture, StatsRecorder, capture_stats, predict_stats

__all__ = ["Budget", "Capture", "ModelDims", "PatternRecorder", "PatternReducer", "Prediction", "StatsCapture",
           "StatsRecorder", "ZRecorder", "capture", "capture_stats", "predict_capture", "predict_stats",
           "select_heads"]
