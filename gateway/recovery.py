"""The replay/live merge of one session, without I/O: which event frames to send, in order.

A session subscribes before it reads its feed stream, so an event can reach it twice: in
a replay page and as a live frame. While it replays (`syncing`), live frames wait in a
bounded buffer; after the last page, the buffered frames newer than what was sent follow
in arrival order (pub/sub keeps a channel's order, and the fan-out publishes in feed-id
order), then live frames go straight out. Every frame passes one cursor check: its stream
id must be greater than the last one sent. A buffer that overflows is dropped and the
feed stream read again from the cursor: everything published is in the stream too.

The session (gateway/live.py) reads and writes; this decides (centrifuge keeps the same
merge in internal/recovery).
"""

from __future__ import annotations

from livefeed.core.eventlog import FeedEntry, parse_stream_id

StreamId = tuple[int, int]
# A published event frame: (stream id, feed id, frame).
Live = tuple[StreamId, str, bytes]


class Recovery:
    """The cursor (last event sent) and the live frames held back while replaying."""

    __slots__ = ("cursor", "cursor_id", "syncing", "_buffer", "_overflow", "_limit")

    def __init__(self, limit: int, *, syncing: bool = True) -> None:
        """`limit`: live frames held back during a replay before reading the feed again."""
        self.cursor: StreamId | None = None
        self.cursor_id: str | None = None  # None: before everything, read without a check
        self.syncing = syncing
        self._buffer: list[Live] = []
        self._overflow = False
        self._limit = limit

    def move_to(self, feed_id: str | None) -> None:
        """Set the cursor: the client's last id, the feed's end at a reset (None: the feed
        is empty or unknown, so anything in it is newer)."""
        parsed = parse_stream_id(feed_id) if feed_id is not None else None
        if parsed is None:
            self.cursor = self.cursor_id = None
        else:
            self.cursor, self.cursor_id = parsed, feed_id

    def begin(self) -> None:
        """A replay starts (connect, or re-sync after a pub/sub loss): hold live frames."""
        self.syncing = True

    def live(self, parsed: StreamId, fid: str, frame: bytes) -> bool:
        """A live event frame arrived: True to send it now (the cursor is on it); False when
        it is held back by a replay or was sent already."""
        if self.syncing:
            if len(self._buffer) >= self._limit:
                self._buffer.clear()
                self._overflow = True
            else:
                self._buffer.append((parsed, fid, frame))
            return False
        cursor = self.cursor
        if cursor is not None and parsed <= cursor:
            return False
        self.cursor, self.cursor_id = parsed, fid
        return True

    def replayed(self, entries: list[FeedEntry]) -> list[FeedEntry]:
        """The entries of a replay page to send, in order (those after the cursor, which
        moves to the last of them). A page comes from one XRANGE, in increasing id order,
        so only the first ids up to one past the cursor and the last id are parsed."""
        cursor = self.cursor
        start, parsed = 0, None
        while start < len(entries):
            parsed = parse_stream_id(entries[start][0])
            if parsed is not None and (cursor is None or parsed > cursor):
                break
            start += 1
        if parsed is None or start == len(entries):
            return []
        last = entries[-1][0]
        if start < len(entries) - 1:
            end = parse_stream_id(last)
            if end is None or end <= parsed:  # not a page of increasing ids: check each
                return self._each(entries[start:])
            parsed = end
        self.cursor, self.cursor_id = parsed, last
        return entries[start:]

    def _each(self, entries: list[FeedEntry]) -> list[FeedEntry]:
        out: list[FeedEntry] = []
        for entry in entries:
            parsed = parse_stream_id(entry[0])
            if parsed is not None and (self.cursor is None or parsed > self.cursor):
                self.cursor, self.cursor_id = parsed, entry[0]
                out.append(entry)
        return out

    def flush(self) -> list[Live]:
        """After the last page: the held-back frames to send, in order (those after the
        cursor, which moves to the last of them). Sending them may let more arrive: call
        again until it returns [], then `finish`."""
        if self._overflow or not self._buffer:
            return []
        held, self._buffer = self._buffer, []
        out: list[Live] = []
        for item in held:
            cursor = self.cursor
            if cursor is None or item[0] > cursor:
                self.cursor, self.cursor_id = item[0], item[1]
                out.append(item)
        return out

    def finish(self) -> bool:
        """True: the replay is over, live frames go straight out from now on. False: the
        buffer overflowed, so read the feed stream again from the cursor (and flush)."""
        if self._overflow:
            self._overflow = False
            self._buffer.clear()
            return False
        self.syncing = False
        return True
