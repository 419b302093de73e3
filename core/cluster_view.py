"""A Redis Cluster's topology as one node sees it: the lines of CLUSTER NODES.

Parsed here rather than by redis-py, whose parser is private and whose cluster client
hides what each node believes (a failover is over when every node agrees).
"""

from __future__ import annotations

from dataclasses import dataclass

SLOTS = 16384


@dataclass
class NodeView:
    """One line of CLUSTER NODES: a node as a peer sees it."""

    node_id: str
    port: int
    flags: frozenset[str]
    primary_id: str | None
    slots: list[tuple[int, int]]

    @property
    def is_primary(self) -> bool:
        return "master" in self.flags

    @property
    def failed(self) -> bool:
        return bool(self.flags & {"fail", "fail?", "handshake", "noaddr"})


def parse_nodes(text: str) -> list[NodeView]:
    views = []
    for line in text.splitlines():
        if not line.strip():
            continue
        parts = line.split()
        node_id, addr, flags, primary = parts[:4]
        address = addr.split(",")[0].split("@")[0]
        slots = []
        for item in parts[8:]:
            if item.startswith("["):  # a slot being imported or migrated
                continue
            start, _, end = item.partition("-")
            slots.append((int(start), int(end or start)))
        views.append(NodeView(
            node_id=node_id,
            port=int(address.rsplit(":", 1)[1] or 0),
            flags=frozenset(flags.split(",")),
            primary_id=None if primary == "-" else primary,
            slots=slots,
        ))  # fmt: skip
    return views


def served_slots(views: list[NodeView]) -> int:
    """How many slots a primary that is not failed serves, in this view."""
    return sum(b - a + 1 for v in views if v.is_primary and not v.failed for a, b in v.slots)


def slot_owner(views: list[NodeView], slot: int) -> NodeView | None:
    """The primary (not failed) serving `slot` in this view, if any."""
    for v in views:
        if v.is_primary and not v.failed and any(a <= slot <= b for a, b in v.slots):
            return v
    return None
