"""The browser fixture of tests/e2e, for the page-behind-nginx test."""

from tests.helpers.browser import chromium

__all__ = ["chromium"]
