"""engage: warehouse-native audiences and computed traits, synced as Segment-spec calls."""

from __future__ import annotations

__version__ = "0.1.0"
