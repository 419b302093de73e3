"""The browser tests' fixtures."""

from tests.helpers.browser import chromium

__all__ = ["chromium"]
