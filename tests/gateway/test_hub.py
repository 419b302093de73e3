"""The hub's one pub/sub connection: reference counts, and a killed link loses nothing."""

from __future__ import annotations

import contextlib
from typing import Any

import anyio
import pytest

from livefeed.core.keys import Keys
from livefeed.gateway.hub import Hub, buffered_replies
from livefeed.gateway.live import Session
from tests.gateway.livehelp import (
    Counting,
    assert_exact,
    make_log,
    numsub,
    publish,
    reconnects,
    running_hub,
)
from tests.helpers.frames import Recorder
from tests.helpers.waiting import eventually

pytestmark = pytest.mark.anyio


async def test_channel_is_subscribed_while_a_user_has_a_session(redis: Any, keys: Keys,
                                                                hub: Hub) -> None:
    tab1, tab2, other = Counting(), Counting(), Counting()
    channel = keys.live("alice")
    async with hub.subscribe("bob", other) as bob_subscribed:
        assert bob_subscribed is True
        async with hub.subscribe("alice", tab1) as first:
            async with hub.subscribe("alice", tab2) as second:
                assert first is second is True
                assert await numsub(redis, channel) == 1  # one connection, however many tabs
                await redis.publish(channel, b"x")
                await eventually(lambda: _true(len(tab1.frames) == len(tab2.frames) == 1))
                assert other.frames == []
            assert await numsub(redis, channel) == 1
        await eventually(lambda: _eq(numsub(redis, channel), 0))
        assert await numsub(redis, keys.live("bob")) == 1
        assert hub.local_users() == 1
    await eventually(lambda: _eq(numsub(redis, keys.live("bob")), 0))
    assert hub.local_users() == 0


async def test_a_subscription_ends_with_its_block_on_error_or_cancel(redis: Any, keys: Keys,
                                                                     hub: Hub) -> None:
    with pytest.raises(LookupError):
        async with hub.subscribe("alice", Counting()):
            assert hub.local_users() == 1
            raise LookupError("the session failed")
    assert hub.local_users() == 0

    entered = anyio.Event()

    async def subscribed() -> None:
        async with hub.subscribe("alice", Counting()):
            entered.set()
            await anyio.sleep_forever()

    async with anyio.create_task_group() as tg:
        tg.start_soon(subscribed)
        await entered.wait()
        assert hub.local_users() == 1
        tg.cancel_scope.cancel()
    assert hub.local_users() == 0
    await eventually(lambda: _eq(numsub(redis, keys.live("alice")), 0))


class Keeping(Counting):
    """Also keeps the list object of each burst."""

    def __init__(self) -> None:
        super().__init__()
        self.lists: list[list[bytes]] = []

    def on_live_many(self, frames: list[bytes]) -> None:
        super().on_live_many(frames)
        self.lists.append(frames)


async def test_a_channels_messages_read_together_reach_its_tabs_as_one_burst(
        redis: Any, keys: Keys, hub: Hub) -> None:
    tab1, tab2, bob = Keeping(), Keeping(), Keeping()
    async with hub.subscribe("alice", tab1), hub.subscribe("alice", tab2), \
            hub.subscribe("bob", bob):
        pipe = redis.pipeline(transaction=True)  # EXEC: Redis writes them all at once
        for channel, data in [("alice", b"a1"), ("alice", b"a2"), ("bob", b"b1"),
                              ("alice", b"a3")]:
            pipe.publish(keys.live(channel), data)
        await pipe.execute()
        await eventually(lambda: _true(len(tab2.frames) == 3 and len(bob.frames) == 1))
    assert tab1.frames == tab2.frames == [b"a1", b"a2", b"a3"]
    assert tab1.bursts == tab2.bursts == [3] and tab1.lists[0] is tab2.lists[0]
    assert bob.frames == [b"b1"] and bob.bursts == [1]  # alone on its channel: on_live


async def test_a_burst_read_in_one_go_reaches_every_user_in_order(redis: Any, keys: Keys,
                                                                  hub: Hub) -> None:
    users = [f"u{i}" for i in range(50)]
    tabs = {user: Counting() for user in users}
    async with contextlib.AsyncExitStack() as stack:
        for user in users:
            assert await stack.enter_async_context(hub.subscribe(user, tabs[user]))
        (link,) = hub._links.values()
        pubsub = link.pubsub
        # This redis-py still offers what the link drains: else an upgrade slowed it down.
        assert buffered_replies(pubsub) is not None
        reads = 0
        parse = pubsub.parse_response

        async def counted(*args: Any, **kwargs: Any) -> Any:
            nonlocal reads
            reads += 1
            return await parse(*args, **kwargs)

        pubsub.parse_response = counted
        rounds = 40
        pipe = redis.pipeline(transaction=False)
        for n in range(rounds):
            for user in users:
                pipe.publish(keys.live(user), f"{user}:{n}".encode())
        late = Counting()
        async with anyio.create_task_group() as tg:
            tg.start_soon(pipe.execute)
            # A confirmation may come in the middle of a burst, among the messages.
            assert await stack.enter_async_context(hub.subscribe("late", late))
        await redis.publish(keys.live("late"), b"late:0")
        await eventually(lambda: _true(all(len(t.frames) == rounds for t in tabs.values())
                                       and late.frames == [b"late:0"]))
        for user in users:
            assert tabs[user].frames == [f"{user}:{n}".encode() for n in range(rounds)]
        # The messages came in far fewer awaited reads than messages.
        assert reads < len(users) * rounds / 4, reads


async def _true(value: bool) -> bool:
    return value


async def _eq(value: Any, want: int) -> bool:
    return bool(await value == want)


async def kill_hub_link(redis: Any, hub: Hub) -> None:
    """CLIENT KILL the hub's own connection only (found by its CLIENT SETNAME)."""
    clients = await redis.client_list()
    ids = [c["id"] for c in clients if c.get("name") == hub.name]
    assert len(ids) == 1, clients
    await redis.execute_command("CLIENT", "KILL", "ID", ids[0])


async def test_killed_link_reconnects_and_resyncs_without_loss(redis: Any, keys: Keys,
                                                              hub: Hub) -> None:
    log = make_log(redis, keys)
    rec = Recorder()
    session = Session(user="alice", log=log, hub=hub, transport=rec, last_id=None)
    before = reconnects()
    async with anyio.create_task_group() as tg:
        tg.start_soon(session.run)
        await rec.until(lambda r: r.types() == ["hello"])
        first = await publish(log, "alice", 20)
        await rec.until(lambda r: len(r.events()) >= 20)
        await kill_hub_link(redis, hub)
        # Published while the link is down: only the feed stream has these.
        gap = await publish(log, "alice", 50, start=20)
        await eventually(lambda: hub.healthy and reconnects() > before)
        after = await publish(log, "alice", 20, start=70)
        await rec.until(lambda r: len(r.events()) >= 90)
        await anyio.sleep(0.3)
        tg.cancel_scope.cancel()
    assert_exact(rec.events(), first + gap + after)
    assert await numsub(redis, keys.live("alice")) == 0


async def test_a_channel_lingers_after_its_last_session_then_is_dropped(
        redis: Any, redis_url: str, keys: Keys) -> None:
    async with running_hub(redis_url, keys, linger_s=1.0) as hub:
        users = ["alice", "bob", "carol"]
        async with contextlib.AsyncExitStack() as stack:
            for user in users:
                assert await stack.enter_async_context(hub.subscribe(user, Counting()))
        assert hub.local_users() == 0 and hub.channels() == 3
        for user in users:  # still subscribed: the sessions left a moment ago
            assert await numsub(redis, keys.live(user)) == 1
        async with hub.subscribe("dave", marker := Counting()):
            await redis.publish(keys.live("alice"), b"to nobody")  # dropped, no error
            await redis.publish(keys.live("dave"), b"after it")  # read after it, in order
            await eventually(lambda: _true(marker.frames == [b"after it"]))

        (link,) = hub._links.values()
        subscribes = 0
        subscribe = link.subscribe

        async def counted(subs: Any) -> None:
            nonlocal subscribes
            subscribes += 1
            await subscribe(subs)

        link.subscribe = counted  # type: ignore[method-assign]
        back = Counting()
        async with hub.subscribe("alice", back) as confirmed:
            assert confirmed is True and subscribes == 0  # no SUBSCRIBE: it lingered
            assert hub.local_users() == 1 and hub.channels() == 4
            await redis.publish(keys.live("alice"), b"live")
            await eventually(lambda: _true(back.frames == [b"live"]))
            await anyio.sleep(1.6)  # past the linger: a channel in use is never dropped
            assert await numsub(redis, keys.live("alice")) == 1
            await redis.publish(keys.live("alice"), b"still")
            await eventually(lambda: _true(back.frames == [b"live", b"still"]))
        # One timer drops them all once they are a second idle, alice's a little later.
        for user in [*users, "dave"]:
            await eventually(lambda u=user: _eq(numsub(redis, keys.live(u)), 0), timeout=5)
        assert hub.local_users() == hub.channels() == 0
        assert subscribes == 0


async def test_a_session_on_a_lingering_channel_gets_what_it_missed_once(
        redis: Any, redis_url: str, keys: Keys) -> None:
    """A reconnect finds its channel subscribed (frames published meanwhile went to nobody,
    and a pub/sub link lost meanwhile came back): its replay fills the gap exactly."""
    log = make_log(redis, keys)
    async with running_hub(redis_url, keys, linger_s=30.0) as hub:
        rec = Recorder()
        session = Session(user="alice", log=log, hub=hub, transport=rec, last_id=None)
        async with anyio.create_task_group() as tg:
            tg.start_soon(session.run)
            await rec.until(lambda r: r.types() == ["hello"])
            first = await publish(log, "alice", 10)
            await rec.until(lambda r: len(r.events()) >= 10)
            session.stop()
        last_id = rec.events()[-1]
        assert hub.channels() == 1 and hub.local_users() == 0
        # Lingering, with no session: these reach the channel and go nowhere.
        quiet = await publish(log, "alice", 15, start=10)
        before = reconnects()
        await kill_hub_link(redis, hub)
        lost = await publish(log, "alice", 15, start=25)  # while the link is down
        rec2 = Recorder()
        again = Session(user="alice", log=log, hub=hub, transport=rec2, last_id=last_id)
        async with anyio.create_task_group() as tg:
            tg.start_soon(again.run)
            await eventually(lambda: hub.healthy and reconnects() > before)
            after = await publish(log, "alice", 10, start=40)
            await rec2.until(lambda r: len(r.events()) >= 40)
            await anyio.sleep(0.3)
            tg.cancel_scope.cancel()
    assert_exact(rec.events(), first)
    assert_exact(rec2.events(), quiet + lost + after)


@pytest.mark.parametrize("linger_s", [0.0, 0.05])
async def test_a_join_racing_the_last_leave_or_the_expiry_stays_subscribed(
        redis: Any, redis_url: str, keys: Keys, linger_s: float) -> None:
    """A join that lands while the last tab leaves (its UNSUBSCRIBE on the way) or while
    the channel expires ends subscribed."""
    async with running_hub(redis_url, keys, linger_s=linger_s) as hub:
        for n in range(40):
            old, new = Counting(), Counting()
            leaving = hub.subscribe("alice", old)
            assert await leaving.__aenter__()
            if n % 2:
                await anyio.sleep(0.06)  # with a linger: the sweep may run meanwhile
            async with anyio.create_task_group() as tg:
                tg.start_soon(leaving.__aexit__, None, None, None)
                if n % 3:
                    await anyio.sleep(0)
                tg.start_soon(_hold, hub, redis, new, n)
        if not linger_s:
            assert await numsub(redis, keys.live("alice")) == 0


async def _hold(hub: Hub, redis: Any, tab: Counting, n: int) -> None:
    async with hub.subscribe("alice", tab) as subscribed:
        assert subscribed
        message = f"m{n}".encode()
        await redis.publish(hub.channel("alice"), message)
        await eventually(lambda: _true(tab.frames == [message]), timeout=5)
