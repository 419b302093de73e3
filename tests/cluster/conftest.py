"""Browser fixture for the cluster tests (the demo page against `up --cluster`)."""

from tests.helpers.browser import chromium

__all__ = ["chromium"]
