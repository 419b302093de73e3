"""core.heap: startup's survivors are set aside; what comes later is collected."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from livefeed.core import heap


@pytest.fixture
def unfrozen() -> Iterator[None]:
    yield
    gc.unfreeze()  # the test process goes on as before


class _Node:
    def __init__(self) -> None:
        self.me = self  # a cycle: only the collector frees it


def test_settle_freezes_startup_and_later_garbage_is_still_collected(unfrozen: None) -> None:
    startup = _Node()
    heap.settle()
    assert gc.get_freeze_count() > 0
    assert not any(o is startup for o in gc.get_objects())  # not walked any more
    later = _Node()
    gone = weakref.ref(later)
    del later
    gc.collect()
    assert gone() is None
