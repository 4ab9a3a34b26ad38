"""The hub routes live messages by kind and site: a console on one estate is not woken for the others'
events, and ingest can ask whether anyone reads an estate's events before building them."""

from __future__ import annotations

from typing import Any

from cloud.hub import Hub, Subscriber


def _drain(sub: Subscriber) -> list[tuple[str, Any]]:
    out = []
    while not sub.queue.empty():
        message = sub.queue.get_nowait()
        out.append((message["kind"], message["data"].get("site_id") or message["data"].get("id")))
    return out


async def test_messages_go_to_the_subscribers_of_their_kind_and_site() -> None:
    hub = Hub()
    async with (
        hub.subscribe(["event", "command", "gateway"], ["estate-a"]) as a,
        hub.subscribe(["event"], ["estate-a", "estate-b"]) as a_and_b,
        hub.subscribe() as everything,
        hub.subscribe(["gateway"]) as gateways,
        hub.subscribe(["event"], []) as nothing,  # a user with no estates
    ):
        hub.publish("event", {"site_id": "estate-a"})
        hub.publish("event", {"site_id": "estate-b"})
        hub.publish("event", {"site_id": "estate-c"})
        hub.publish("command", {"id": "c1", "site_id": "estate-b"})
        hub.publish("work_order", {"site_id": "estate-a"})
        hub.publish("gateway", {"id": "gw-a", "site_id": "estate-a"})
        # The sweeper's offline notice names only the gateway: every gateway subscriber gets it, once.
        hub.publish("gateway", {"id": "gw-b", "online": False})

        assert _drain(a) == [("event", "estate-a"), ("gateway", "estate-a"), ("gateway", "gw-b")]
        assert _drain(a_and_b) == [("event", "estate-a"), ("event", "estate-b")]
        assert _drain(everything) == [
            ("event", "estate-a"),
            ("event", "estate-b"),
            ("event", "estate-c"),
            ("command", "estate-b"),
            ("work_order", "estate-a"),
            ("gateway", "estate-a"),
            ("gateway", "gw-b"),
        ]
        assert _drain(gateways) == [("gateway", "estate-a"), ("gateway", "gw-b")]
        assert _drain(nothing) == []
        assert hub.subscriber_count == 5
    assert hub.subscriber_count == 0
    hub.publish("event", {"site_id": "estate-a"})  # nobody left: nothing kept


async def test_wants_says_whether_an_estates_events_reach_anyone() -> None:
    hub = Hub()
    assert not hub.wants("event", "estate-a")
    async with hub.subscribe(["event"], ["estate-a"]):
        assert hub.wants("event", "estate-a")
        assert not hub.wants("event", "estate-b")
        assert not hub.wants("command", "estate-a")
        async with hub.subscribe(["command"]):
            assert hub.wants("command", "estate-b")
            assert not hub.wants("event", "estate-b")
    assert not hub.wants("event", "estate-a")
    # Another instance's streams: events of the estates it reads; other kinds while any stream is open.
    asked: list[str | None] = []

    def remote_wants(site: str | None) -> bool:
        asked.append(site)
        return site in (None, "estate-b")

    hub.remote_wants = remote_wants
    assert hub.wants("event", "estate-b")
    assert not hub.wants("event", "estate-c")
    assert hub.wants("command", "estate-c")
    assert asked == ["estate-b", "estate-c", None]


async def test_event_sites_names_the_estates_whose_events_a_stream_here_reads() -> None:
    hub = Hub()
    assert hub.event_sites() == frozenset()
    async with hub.subscribe(["event", "command"], ["estate-a", "estate-b"]), hub.subscribe(["gateway"]):
        assert hub.event_sites() == {"estate-a", "estate-b"}
        async with hub.subscribe(["event"]):
            assert hub.event_sites() is None  # one stream reads every estate's
        assert hub.event_sites() == {"estate-a", "estate-b"}
    assert hub.event_sites() == frozenset()


async def test_a_slow_subscriber_loses_its_oldest_messages_not_the_others() -> None:
    hub = Hub(queue_size=2)
    async with (
        hub.subscribe(["event"], ["estate-a"]) as slow,
        hub.subscribe(["event"], ["estate-b"]) as other,
    ):
        for n in range(5):
            hub.publish("event", {"site_id": "estate-a", "n": n})
        hub.publish("event", {"site_id": "estate-b", "n": 9})
        assert [slow.queue.get_nowait()["data"]["n"] for _ in range(2)] == [3, 4]
        assert (slow.dropped, other.dropped, other.queue.qsize()) == (3, 0, 1)
