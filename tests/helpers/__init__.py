"""Helpers shared by test modules.

A test module imports helpers from here, `tests/procs.py`, `tests/servers.py` or
`tests/gateway/livehelp.py`, never from another test module (`tests/test_imports.py`).
"""
