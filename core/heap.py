"""The collector's view of a long-running process (gateway, consumer).

CPython's full collection walks every tracked object. What startup builds (modules,
the app, its routes and settings: ~64k objects in a gateway) lives as long as the
process, yet each full collection walked it again: with 1,000 connections a gateway
tracked ~110k objects, and its full collections paused it for 100-270 ms on a 2-core
machine, the tail of the e2e benchmark's p99. `settle()` collects once and freezes what
is left (`gc.freeze`: moved to a generation the collector never walks), so a full
collection walks what the process made since (47k objects there: 60-95 ms).
Garbage made later is collected as before; only startup's survivors are set aside.
"""

from __future__ import annotations

import gc


def settle() -> None:
    """Call once, when startup is done and before serving."""
    gc.collect()
    gc.freeze()
