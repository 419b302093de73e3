"""Dead letters: list, show, retry into the ingest stream, drop; on Redis 7 and 6.2."""

from __future__ import annotations

from typing import Any

import anyio

from livefeed.core import deadletters
from livefeed.core.deadletters import DeadLetter, DeadLetters
from livefeed.core.groupstream import ref
from livefeed.core.keys import PERSIST_GROUP, Keys
from tests.helpers.streams import both, bury, ingest_length, log_of, poisoned


@both
async def test_list_and_show(r: Any, keys: Keys) -> None:
    dead_id, event_id, data = await poisoned(r, keys)
    # Letters of one millisecond in different partitions are ordered by partition: let the
    # clock move so "oldest first" is the order they were buried in.
    await anyio.sleep(0.005)
    other = await bury(r, keys, b"not json at all", group="fanout", error="DecodeError")
    dl = DeadLetters(r, keys, log_of(r, keys))

    listing = await dl.letters()
    assert listing.total == 2
    first, second = listing.letters
    assert (first.id, first.group, first.error, first.deliveries) == (
        dead_id, PERSIST_GROUP, "ValueError: bad sender", 5)
    assert (first.event_id, first.user, first.preview) == (
        event_id, "bob", "news@example.com: Poison")
    assert first.data is None  # the list stays small
    assert (second.id, second.event_id, second.preview) == (other, None, "not json at all")
    assert [x.id for x in (await dl.letters(group="fanout")).letters] == [other]
    assert [x.id for x in (await dl.letters(limit=1)).letters] == [dead_id]
    assert [x.id for x in (await dl.letters(after=dead_id)).letters] == [other]

    shown = await dl.show(dead_id)
    assert shown is not None and shown.data == data.decode()
    assert await dl.show("0/1-1") is None  # a well-formed ref of no letter
    assert await dl.show("1-1") is None  # a bare stream id names no partition
    assert await dl.show("junk") is None


@both
async def test_retry_puts_the_original_back_into_ingest(r: Any, keys: Keys) -> None:
    dead_id, event_id, data = await poisoned(r, keys)
    dl = DeadLetters(r, keys, log_of(r, keys))
    [action] = await dl.retry([dead_id])
    assert action.outcome == "retried" and action.ingest_id is not None
    # Back in the ingest stream byte for byte, despite the seen marker of its first arrival.
    # (into the user's partition: the letter's own)
    rows = await r.xrange(keys.ingest_of("bob"))
    assert [(ref(keys.partition_of("bob"), sid.decode()), f) for sid, f in rows] == [
        (action.ingest_id, {b"event_id": event_id.encode(), b"user": b"bob", b"data": data})]
    assert dead_id.startswith(f"{keys.partition_of('bob')}/")
    assert await dl.count() == 0
    [again] = await dl.retry([dead_id])
    assert again.outcome == "missing"
    assert await ingest_length(r, keys) == 1


@both
async def test_retry_refuses_a_payload_that_is_no_event(r: Any, keys: Keys) -> None:
    junk = await bury(r, keys, b"{\"half\": ")
    dl = DeadLetters(r, keys, log_of(r, keys))
    [action] = await dl.retry([junk])
    assert action.outcome == "invalid" and "drop" in (action.reason or "")
    assert await dl.count() == 1 and await ingest_length(r, keys) == 0


@both
async def test_retry_all_with_progress(r: Any, keys: Keys) -> None:
    ids = [(await poisoned(r, keys, f"Poison {i}"))[0] for i in range(3)]
    dl = DeadLetters(r, keys, log_of(r, keys))
    seen: list[tuple[int, int]] = []
    actions = await dl.retry(await dl.all_ids(), progress=lambda d, t: seen.append((d, t)))
    assert [a.id for a in actions] == ids and {a.outcome for a in actions} == {"retried"}
    assert seen == [(1, 3), (2, 3), (3, 3)]
    assert await dl.count() == 0 and await ingest_length(r, keys) == 3


@both
async def test_drop(r: Any, keys: Keys) -> None:
    a, _, _ = await poisoned(r, keys, "A")
    b, _, _ = await poisoned(r, keys, "B")
    dl = DeadLetters(r, keys, log_of(r, keys))
    actions = await dl.drop([a, "0/9-9", "9-9", "junk"])
    assert [(x.id, x.outcome) for x in actions] == [
        (a, "dropped"), ("0/9-9", "missing"), ("9-9", "missing"), ("junk", "missing")]
    assert [x.id for x in (await dl.letters()).letters] == [b]
    assert await ingest_length(r, keys) == 0  # drop never re-appends


@both
async def test_malformed_letters_still_show(r: Any, keys: Keys) -> None:
    # In two partitions: the list merges them oldest first (a tie goes to the lower one).
    a = ref(0, (await r.xadd(keys.dead(0), {"note": "hand-written"})).decode())
    last = keys.count - 1
    b = ref(last, (await r.xadd(keys.dead(last), {"data": "x", "deliveries": "many"})).decode())
    dl = DeadLetters(r, keys, log_of(r, keys))
    letters = (await dl.letters()).letters
    assert [(x.id, x.deliveries, x.group, x.preview) for x in letters] == [
        (a, 0, "", None), (b, 0, "", "x")]


def test_a_letter_reads_back_as_written() -> None:
    letter = DeadLetter(source_id="5-1", group="persist", consumer="c", error="boom",
                        deliveries=5, data=b'{"id":"x"}\x00\xff', failed_at_ms=1,
                        event_id="e", user="bob")
    fields = {k.encode(): v if isinstance(v, bytes) else str(v).encode()
              for k, v in deadletters.to_fields(letter).items()}
    assert deadletters.from_fields(fields) == letter
    malformed = deadletters.letter_of("5-2", {b"data": b"x"}, group="fanout", consumer="c",
                                      error="e" * 5000, deliveries=3)
    assert "event_id" not in deadletters.to_fields(malformed)
    assert (malformed.event_id, malformed.user, len(malformed.error)) == (None, None, 2000)


@both
async def test_the_dead_letter_stream_is_bounded(r: Any, keys: Keys) -> None:
    await r.xgroup_create(keys.ingest(3), PERSIST_GROUP, id="0", mkstream=True)
    maxlen = 100
    for batch in range(10):
        letters = [deadletters.letter_of(ref(3, f"{batch}-{i}"), {b"data": b"x"},
                                         group=PERSIST_GROUP, consumer="c", error="boom",
                                         deliveries=5)
                   for i in range(1, 101)]
        await deadletters.bury(r, keys, PERSIST_GROUP, letters, maxlen=maxlen)
    assert [await r.xlen(k) for k in keys.deads if k != keys.dead(3)] == [0] * (keys.count - 1)
    length = await r.xlen(keys.dead(3))
    # MAXLEN ~ trims whole radix-tree nodes (100 entries each by default): never fewer
    # than asked, at most one node more; 1,000 letters were written.
    assert maxlen <= length < 2 * maxlen + 1
    newest = await r.xrevrange(keys.dead(3), count=1)
    assert deadletters.from_fields(newest[0][1]).source_id == "3/9-100"
