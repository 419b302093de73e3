"""`livefeed compare`: the same fault scenarios against `streams` and `pubsub` delivery.

Real gateway and consumer processes on a fresh namespace per cell, real WebSocket
clients, a load generator on `POST /v1/events`; every count is made by matching ids.
"""
