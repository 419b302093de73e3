"""livefeed: newsletters from webhooks to a live, gap-free per-user feed.

The installed distribution is this one import package. Its subpackages are the
repository's top-level folders (`core`, `gateway`, `consumers`, `schemas`, `ops`),
linked here so that the source layout stays flat while nothing generic such as `core`
lands in site-packages.
"""
