"""The browser fixture of tests/e2e, for the page-behind-nginx test."""

from tests.e2e.conftest import chromium

__all__ = ["chromium"]
