"""The replay/live merge on its own: cursor, replay pages and held-back live frames in, the
frames to send out, in order. No Redis, no hub, no session."""

from __future__ import annotations

import pytest

from livefeed.core.eventlog import FEED_START, FeedEntry
from livefeed.gateway.recovery import Live, Recovery


def fid(ms: int, seq: int = 0) -> str:
    return f"{ms}-{seq}"


def entries(*ids: str) -> list[FeedEntry]:
    return [(i, b"{}") for i in ids]


def live(recovery: Recovery, *ids: str) -> list[str]:
    """Publish `ids` live; the ones to send at once."""
    out = []
    for i in ids:
        ms, seq = i.split("-")
        if recovery.live((int(ms), int(seq)), i, i.encode()):
            out.append(i)
    return out


def sent(items: list[FeedEntry] | list[Live]) -> list[str]:
    return [i[0] if len(i) == 2 else i[1] for i in items]


def drain(recovery: Recovery) -> list[str]:
    """Flush until nothing is held back; the frames flushed, in order."""
    out: list[str] = []
    while held := recovery.flush():
        out += sent(held)
    return out


def test_frames_published_during_the_replay_follow_it_once_and_in_order() -> None:
    r = Recovery(limit=100)
    r.move_to(fid(10))
    # Subscribed before reading: 12 and 13 arrive live while the page is read...
    assert live(r, fid(12), fid(13)) == []
    # ...and are in the page too.
    assert sent(r.replayed(entries(fid(11), fid(12), fid(13)))) == [fid(11), fid(12), fid(13)]
    assert live(r, fid(14)) == []
    assert drain(r) == [fid(14)]
    assert r.finish()
    assert (r.cursor_id, r.syncing) == (fid(14), False)
    # Live from here: newer frames go straight out, older or repeated ones never.
    assert live(r, fid(14), fid(13), fid(15), fid(15, 1)) == [fid(15), fid(15, 1)]
    assert r.cursor_id == fid(15, 1)


def test_replay_pages_skip_what_was_sent() -> None:
    r = Recovery(limit=100)
    r.move_to(fid(5))
    assert sent(r.replayed(entries(fid(4), fid(5), fid(6)))) == [fid(6)]
    assert sent(r.replayed(entries(fid(6), fid(7)))) == [fid(7)]
    assert r.cursor_id == fid(7)


def test_a_frame_sent_while_flushing_can_make_more_arrive() -> None:
    r = Recovery(limit=100)
    r.move_to(fid(1))
    live(r, fid(2))
    assert sent(r.flush()) == [fid(2)]
    live(r, fid(3))  # arrived while 2 was written
    assert sent(r.flush()) == [fid(3)]
    assert r.flush() == []
    assert r.finish()


def test_an_overflowing_buffer_is_dropped_and_the_feed_read_again() -> None:
    r = Recovery(limit=3)
    r.move_to(fid(1))
    assert live(r, fid(2), fid(3), fid(4), fid(5), fid(6)) == []
    # Past the limit the held frames are dropped: the feed stream has them all.
    assert r.flush() == []
    assert not r.finish()
    assert r.syncing  # still replaying: read the feed again from the cursor
    assert sent(r.replayed(entries(fid(2), fid(3), fid(4), fid(5), fid(6)))) == [
        fid(2), fid(3), fid(4), fid(5), fid(6)]
    assert drain(r) == []
    assert r.finish()


def test_a_resync_holds_live_frames_again() -> None:
    r = Recovery(limit=100, syncing=False)
    r.move_to(fid(1))
    assert live(r, fid(2)) == [fid(2)]
    r.begin()  # the pub/sub link was replaced: catch up from the feed stream
    assert live(r, fid(4)) == []
    assert sent(r.replayed(entries(fid(3), fid(4)))) == [fid(3), fid(4)]
    assert drain(r) == []
    assert r.finish()
    assert live(r, fid(5)) == [fid(5)]


def test_the_cursor_positions() -> None:
    r = Recovery(limit=10)
    assert r.cursor is None  # before everything: any id is newer
    assert sent(r.replayed(entries(fid(1)))) == [fid(1)]
    r.move_to(FEED_START)
    assert (r.cursor, r.cursor_id) == ((0, 0), FEED_START)
    assert sent(r.replayed(entries(fid(0, 1)))) == [fid(0, 1)]
    r.move_to(None)  # a reset on an empty feed
    assert (r.cursor, r.cursor_id) == (None, None)
    r.move_to("garbage")
    assert r.cursor is None
    # Stream ids compare as numbers, not as text.
    r.move_to(fid(9, 9))
    assert sent(r.replayed(entries(fid(9, 10), fid(10, 0)))) == [fid(9, 10), fid(10, 0)]


@pytest.mark.parametrize(
    ("cursor", "ids", "sent", "moved_to"),
    [
        ("5-0", ["4-0", "5-0", "6-0", "7-0", "9-1"], ["6-0", "7-0", "9-1"], "9-1"),
        ("5-0", ["6-0"], ["6-0"], "6-0"),
        ("5-0", ["3-0", "5-0"], [], "5-0"),
        (None, ["1-0", "2-0"], ["1-0", "2-0"], "2-0"),
        # A last id not after the first (no XRANGE page has one): each id is checked.
        ("5-0", ["6-0", "8-0", "7-0", "6-0"], ["6-0", "8-0"], "8-0"),
        ("5-0", ["6-0", "bad", "9-0", "bad"], ["6-0", "9-0"], "9-0"),
        ("5-0", [], [], "5-0"),
    ],
)
def test_a_replay_page_sends_what_is_after_the_cursor(
        cursor: str | None, ids: list[str], sent: list[str], moved_to: str) -> None:
    rec = Recovery(10)
    rec.move_to(cursor)
    out = rec.replayed(entries(*ids))
    assert [fid for fid, _ in out] == sent
    assert rec.cursor_id == moved_to
