"""Capture of attention: exact patterns for short contexts, streamed statistics for long ones."""

from .capture import Capture, PatternRecorder, ZRecorder, capture, predict_capture_bytes, select_heads
from .stats import StatsCapture, StatsRecorder, capture_stats

__all__ = ["Capture", "PatternRecorder", "StatsCapture", "StatsRecorder", "ZRecorder", "capture", "capture_stats",
           "predict_capture_bytes", "select_heads"]
