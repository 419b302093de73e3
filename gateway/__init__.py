"""The Starlette app: ingest, WebSocket and SSE delivery, history, admin, metrics, page."""
