"""Per-gateway broker accounts and ACLs, on the embedded amqtt broker and on a real Mosquitto.

Both brokers are driven from the same :class:`BrokerAccounts`; every test runs on both. What the
brokers really do with a forbidden action (checked here, not assumed):

* PUBLISH outside the grant: silently dropped by both; a QoS 1 publisher still gets its PUBACK and
  stays connected, so the assertion is that nobody receives the message.
* SUBSCRIBE outside the grant: SUBACK return code 0x80 on both, and no message is delivered.
* Bad or missing credentials: CONNACK "not authorised"; the client never gets connected.
* Another account's client id: amqtt (our auth plugin, run before amqtt touches the session) refuses
  the CONNECT; Mosquitto's gateway listener replaces every client id with the username
  (``use_username_as_clientid``), so the newcomer connects as itself. Either way the owner of the id
  stays connected and keeps its session.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from protocol.topics import Topics, cloud_fanout_topic
from steward.broker import EmbeddedBroker
from steward.broker_auth import (
    GATEWAY_CLIENT_ID_PREFIXES,
    Access,
    BrokerAccounts,
    BrokerUser,
    filter_covers,
    gateway_username,
    hash_password,
    provision,
    topic_matches,
)
from steward.mosquitto import MosquittoProcess
from steward.mqtt import MqttClient, MqttConnectError, MqttError
from tests.security import MOSQUITTO, SUBACK_FAILURE, suback_codes, until_topic

PREFIX = "steward"
SITE = "oak-garden"
A = Topics(PREFIX, SITE, "gw-a")
B = Topics(PREFIX, SITE, "gw-b")
OTHER_SITE = Topics(PREFIX, "elm-court", "gw-a")  # same gateway id, another estate
USER_A, USER_B = gateway_username(SITE, "gw-a"), gateway_username(SITE, "gw-b")
USER_ELM = gateway_username("elm-court", "gw-a")
CLOUD = "steward-cloud"
FANOUT = cloud_fanout_topic(PREFIX)
# What the edge connects as (edge/gateway.py). gw-a exists at two sites, so its short id names neither
# and both gw-a gateways must use their usernames as client ids.
B_UPLINK_ID = "steward-gw-gw-b"


@dataclass
class AclBroker:
    kind: str
    host: str
    port: int
    passwords: dict[str, str]
    cloud_port: int = 0  # Mosquitto: the cloud's own listener

    def client(
        self, username: str | None, *, client_id: str, password: str | None = None, clean: bool = True
    ) -> MqttClient:
        if username is not None and password is None:
            password = self.passwords[username]
        return MqttClient(
            self.host,
            self.cloud_port if username == CLOUD and self.cloud_port else self.port,
            client_id=client_id,
            username=username,
            password=password,
            clean_session=clean,
        )


@pytest.fixture(params=["amqtt", "mosquitto"])
async def broker(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[AclBroker]:
    prov = provision([(SITE, "gw-a"), (SITE, "gw-b"), ("elm-court", "gw-a")], topic_prefix=PREFIX)
    if request.param == "amqtt":
        async with EmbeddedBroker(port=0, accounts=prov.accounts) as b:
            yield AclBroker("amqtt", b.host, b.port, prov.passwords)
    else:
        if MOSQUITTO is None:
            pytest.skip("mosquitto binary not found (apt install mosquitto)")
        async with MosquittoProcess(tmp_path / "mosquitto", prov.accounts) as m:
            yield AclBroker("mosquitto", m.host, m.port, prov.passwords, m.cloud_port)


# ---- the rules themselves (pure) ----------------------------------------------------------------
@pytest.mark.parametrize(
    ("topic_filter", "topic", "expected"),
    [
        ("a/b/c", "a/b/c", True),
        ("a/+/c", "a/b/c", True),
        ("a/#", "a", True),
        ("a/#", "a/b/c", True),
        ("a/+", "a/b/c", False),
        ("a/b", "a/b/c", False),
        ("#", "$SYS/x", False),
        ("+/x", "$SYS/x", False),
    ],
)
def test_topic_matches(topic_filter: str, topic: str, expected: bool) -> None:
    assert topic_matches(topic_filter, topic) is expected


@pytest.mark.parametrize(
    ("requested", "expected"),
    [
        ("steward/v1/s/gw/down/#", True),
        ("steward/v1/s/gw/down/commands", True),
        ("steward/v1/s/gw/down/+", True),
        ("steward/v1/s/gw/down", True),
        ("steward/v1/s/+/down/#", False),
        ("steward/v1/+/gw/down/#", False),
        ("steward/v1/s/gw/#", False),
        ("steward/#", False),
        ("#", False),
        ("steward/v1/s/gw/up/#", False),
    ],
)
def test_filter_covers_only_narrower_filters(requested: str, expected: bool) -> None:
    assert filter_covers("steward/v1/s/gw/down/#", requested) is expected


def test_grants_by_role() -> None:
    accounts = provision([(SITE, "gw-a")], topic_prefix=PREFIX).accounts
    allows = accounts.allows
    assert allows(USER_A, Access.PUBLISH, A.events)
    assert allows(USER_A, Access.PUBLISH, A.status)
    assert not allows(USER_A, Access.PUBLISH, B.events)
    assert not allows(USER_A, Access.PUBLISH, A.commands)  # a gateway cannot command itself either
    assert allows(USER_A, Access.SUBSCRIBE, f"{A.base}/down/#")
    assert not allows(USER_A, Access.SUBSCRIBE, f"{A.base}/up/#")
    assert not allows(USER_A, Access.RECEIVE, B.commands)
    assert allows(CLOUD, Access.SUBSCRIBE, Topics.cloud_uplink_filter(PREFIX))
    assert allows(CLOUD, Access.SUBSCRIBE, f"$share/cloud/{PREFIX}/v1/+/+/up/events")
    assert not allows(CLOUD, Access.SUBSCRIBE, "$SYS/#")
    assert allows(CLOUD, Access.PUBLISH, B.commands)
    assert not allows(CLOUD, Access.PUBLISH, B.events)  # the cloud cannot forge gateway events
    assert allows(CLOUD, Access.PUBLISH, FANOUT) and allows(CLOUD, Access.SUBSCRIBE, FANOUT)
    assert not allows(USER_A, Access.PUBLISH, FANOUT)  # it reaches operators' consoles
    assert not allows(USER_A, Access.SUBSCRIBE, FANOUT)
    assert not allows(USER_A, Access.RECEIVE, FANOUT)
    assert not allows(None, Access.SUBSCRIBE, "#")
    assert not allows("nobody", Access.PUBLISH, A.events)


def test_accounts_model_rejects_inconsistent_accounts() -> None:
    h = hash_password("x")
    with pytest.raises(ValueError, match="needs site_id and gateway_id"):
        BrokerUser(username="g", password_hash=h, role="gateway")
    with pytest.raises(ValueError, match="takes no site_id"):
        BrokerUser(username="c", password_hash=h, role="cloud", site_id="s")
    with pytest.raises(ValueError, match="duplicate broker username"):
        BrokerAccounts(users=[BrokerUser(username="c", password_hash=h, role="cloud")] * 2)
    with pytest.raises(ValueError, match="two accounts for gateway"):
        BrokerAccounts(
            users=[
                BrokerUser(username=n, password_hash=h, role="gateway", site_id="s", gateway_id="g")
                for n in ("x", "y")
            ]
        )
    with pytest.raises(ValueError, match="must be 1-64 characters"):
        gateway_username("s", "gw/#")


# ---- on real brokers ----------------------------------------------------------------------------
async def test_legitimate_flows_work(broker: AclBroker) -> None:
    async with (
        broker.client(CLOUD, client_id="cloud") as cloud,
        broker.client(USER_A, client_id=USER_A) as gw,
    ):
        await cloud.subscribe(Topics.cloud_uplink_filter(PREFIX))
        await gw.subscribe(f"{A.base}/down/#")
        await gw.publish(A.status, b"status", retain=True)
        await gw.publish(A.events, b"events")
        got = await until_topic(cloud, A.events)
        assert [(m.topic, m.payload) for m in got] == [(A.status, b"status"), (A.events, b"events")]

        await cloud.publish(A.commands, b"command")
        await cloud.publish(A.acks, b"ack")
        got = await until_topic(gw, A.acks)
        assert [(m.topic, m.payload) for m in got] == [(A.commands, b"command"), (A.acks, b"ack")]


@pytest.mark.parametrize(
    "forged",
    [B.events, B.status, B.results, B.commands, A.commands, OTHER_SITE.events, OTHER_SITE.commands],
    ids=[
        "b-events",
        "b-status",
        "b-results",
        "b-commands",
        "own-commands",
        "other-site-events",
        "other-site-cmd",
    ],
)
async def test_gateway_cannot_publish_outside_its_subtree(broker: AclBroker, forged: str) -> None:
    async with (
        broker.client(CLOUD, client_id="cloud") as cloud,
        broker.client(USER_B, client_id=B_UPLINK_ID) as gw_b,
        broker.client(USER_A, client_id=USER_A) as gw_a,
        broker.client(USER_ELM, client_id=USER_ELM) as gw_elm,
    ):
        await cloud.subscribe(Topics.cloud_uplink_filter(PREFIX))
        await gw_b.subscribe(f"{B.base}/down/#")
        await gw_elm.subscribe(f"{OTHER_SITE.base}/down/#")
        await gw_a.subscribe(f"{A.base}/down/#")

        # Both brokers acknowledge the forbidden QoS 1 publish and keep the client connected...
        await gw_a.publish(forged, b"forged", qos=1, retain=True)
        assert gw_a.is_connected
        # ...but deliver it to nobody: sentinels on every receiver's own topic arrive alone.
        await gw_a.publish(A.events, b"sentinel")
        await cloud.publish(B.acks, b"sentinel")
        await cloud.publish(OTHER_SITE.acks, b"sentinel")
        await cloud.publish(A.acks, b"sentinel")
        assert [m.payload for m in await until_topic(cloud, A.events)] == [b"sentinel"]
        assert [m.payload for m in await until_topic(gw_b, B.acks)] == [b"sentinel"]
        assert [m.payload for m in await until_topic(gw_elm, OTHER_SITE.acks)] == [b"sentinel"]
        assert [m.payload for m in await until_topic(gw_a, A.acks)] == [b"sentinel"]

    # Nor was it retained: fresh subscribers find no retained message on the forged topic.
    async with (
        broker.client(CLOUD, client_id="cloud-2") as late,
        broker.client(USER_B, client_id=B_UPLINK_ID) as late_b,
        broker.client(USER_A, client_id=USER_A) as a2,
    ):
        await late.subscribe(Topics.cloud_uplink_filter(PREFIX))
        await late_b.subscribe(f"{B.base}/down/#")
        await a2.publish(A.sync, b"sentinel")
        await late.publish(B.acks, b"sentinel")
        assert [m.payload for m in await until_topic(late, A.sync)] == [b"sentinel"]
        assert [m.payload for m in await until_topic(late_b, B.acks)] == [b"sentinel"]


async def test_only_the_cloud_may_use_the_fanout_topic(broker: AclBroker) -> None:
    """Cloud instances tell each other's consoles about events and commands there: a gateway that could
    publish on it would forge them, one that could read it would see every estate's."""
    async with (
        broker.client(CLOUD, client_id="cloud-a") as cloud_a,
        broker.client(CLOUD, client_id="cloud-b") as cloud_b,
        broker.client(USER_A, client_id=USER_A) as gw,
    ):
        await cloud_b.subscribe(FANOUT, qos=0)
        await gw.subscribe(f"{A.base}/down/#")
        if broker.kind == "amqtt":
            with pytest.raises(MqttError, match="subscription refused"):
                await gw.subscribe(FANOUT)
        else:
            await gw.subscribe(FANOUT)  # granted by Mosquitto 2.0, never delivered (see the module doc)
        await gw.publish(FANOUT, b"forged", qos=1)
        await cloud_a.publish(FANOUT, b"sentinel", qos=1)
        assert [m.payload for m in await until_topic(cloud_b, FANOUT)] == [b"sentinel"]
        await cloud_a.publish(A.commands, b"sentinel")
        assert [m.payload for m in await until_topic(gw, A.commands)] == [b"sentinel"]


REFUSED_FILTERS = [
    f"{B.base}/down/#",
    B.commands,
    f"{PREFIX}/v1/{SITE}/+/down/#",
    f"{PREFIX}/v1/+/+/down/commands",
    f"{OTHER_SITE.base}/down/#",
    f"{A.base}/up/#",  # not even its own uplink
    "#",
    f"$share/x/{B.base}/down/#",
    "$SYS/#",
]


async def test_gateway_cannot_subscribe_to_or_read_other_gateways(broker: AclBroker) -> None:
    codes = await suback_codes(
        broker.host,
        broker.port,
        username=USER_A,
        password=broker.passwords[USER_A],
        filters=[f"{A.base}/down/#", *REFUSED_FILTERS],
        client_id=USER_A,
    )
    assert codes[0] == 1
    if broker.kind == "amqtt":
        # Our topic plugin refuses the SUBSCRIBE itself.
        assert codes[1:] == [SUBACK_FAILURE] * len(REFUSED_FILTERS)
    else:
        # Mosquitto 2.0's acl_file grants any SUBSCRIBE and checks 'read' on every delivery instead
        # (newer releases may refuse up front); either way nothing may arrive, checked below.
        assert set(codes[1:]) <= {1, SUBACK_FAILURE}

    # Whatever the SUBACK said, nothing outside A's own downlink is delivered to A.
    async with (
        broker.client(CLOUD, client_id="cloud") as cloud,
        broker.client(USER_A, client_id=USER_A) as a,
        broker.client(USER_B, client_id=B_UPLINK_ID) as b,
    ):
        await a.subscribe(f"{A.base}/down/#")
        for topic_filter in REFUSED_FILTERS:
            # MqttClient reports a refused SUBACK; only amqtt refuses up front (see above).
            if broker.kind == "amqtt":
                with pytest.raises(MqttError, match="subscription refused"):
                    await a.subscribe(topic_filter)
            else:
                await a.subscribe(topic_filter)
        await cloud.publish(B.commands, b"for-b-only")
        await cloud.publish(OTHER_SITE.commands, b"for-elm-court-only")
        await b.publish(B.events, b"b-events")
        await cloud.publish(A.commands, b"sentinel")
        assert [m.payload for m in await until_topic(a, A.commands)] == [b"sentinel"]


@pytest.mark.parametrize("clean", [True, False], ids=["clean-session", "persistent-session"])
@pytest.mark.parametrize("stolen_id", [B_UPLINK_ID, USER_B, "steward-dev-gw-b"])
async def test_gateway_cannot_take_over_another_gateways_client_id(
    broker: AclBroker, stolen_id: str, clean: bool
) -> None:
    """Gateway A, with its own valid password, connects under one of B's client ids. Before the fix
    amqtt dropped or took over B's session (B silently stopped getting commands, or was kicked off)."""
    async with (
        broker.client(USER_B, client_id=stolen_id, clean=False) as b,
        broker.client(CLOUD, client_id="cloud") as cloud,
    ):
        await b.subscribe(f"{B.base}/down/#")
        hijack = broker.client(USER_A, client_id=stolen_id, clean=clean)
        if broker.kind == "amqtt":
            with pytest.raises(MqttConnectError, match="refused"):
                await hijack.connect(timeout=2)
        else:
            # Mosquitto lets A in, but as itself: the client id it sent is replaced by its username.
            await hijack.connect(timeout=5)
            await hijack.subscribe(f"{A.base}/down/#")
        try:
            await cloud.publish(B.commands, b"for-b-only")
            await cloud.publish(A.commands, b"for-a")
            # B still holds its id: connected, subscribed, getting its commands.
            assert [m.payload for m in await until_topic(b, B.commands)] == [b"for-b-only"]
            assert b.is_connected
            if hijack.is_connected:
                assert [m.payload for m in await until_topic(hijack, A.commands)] == [b"for-a"]
        finally:
            await hijack.disconnect()
        await cloud.publish(B.commands, b"still for b")
        assert [m.payload for m in await until_topic(b, B.commands)] == [b"still for b"]
        assert b.reconnects == 0, "B was kicked off (it reconnected on its own)"


async def test_gateways_connect_with_the_edges_client_ids(broker: AclBroker) -> None:
    """The rule admits what the edge really sends (uplink and on-broker device client ids)."""
    for client_id in (USER_B, *(f"{p}gw-b" for p in GATEWAY_CLIENT_ID_PREFIXES)):
        async with broker.client(USER_B, client_id=client_id) as b:
            await b.publish(B.status, b"{}", qos=1)


async def test_several_cloud_instances_share_the_cloud_account(broker: AclBroker) -> None:
    """Cloud instances log in with one account and their own client ids; none kicks another off."""
    async with (
        broker.client(CLOUD, client_id="cloud-a") as one,
        broker.client(CLOUD, client_id="cloud-b") as two,
        broker.client(USER_B, client_id=B_UPLINK_ID) as b,
    ):
        for cloud in (one, two):
            await cloud.subscribe(Topics.cloud_uplink_filter(PREFIX))
        await b.publish(B.events, b"events")
        assert [m.payload for m in await until_topic(one, B.events)] == [b"events"]
        assert [m.payload for m in await until_topic(two, B.events)] == [b"events"]
        assert one.is_connected and two.is_connected


async def test_cloud_account_cannot_use_a_gateways_client_id_on_amqtt(tmp_path: Path) -> None:
    """On the embedded broker the cloud account is bound too: gateway ids are reserved for gateways.
    (On Mosquitto the cloud's own listener takes ids as sent; see docs/security.md.)"""
    prov = provision([(SITE, "gw-b")], topic_prefix=PREFIX)
    async with EmbeddedBroker(port=0, accounts=prov.accounts) as b:
        for client_id in (B_UPLINK_ID, USER_B, "steward-dev-gw-b", "anything@else"):
            intruder = MqttClient(
                b.host, b.port, client_id=client_id, username=CLOUD, password=prov.passwords[CLOUD]
            )
            with pytest.raises(MqttConnectError, match="refused"):
                await intruder.connect(timeout=2)


def test_client_id_rules() -> None:
    accounts = provision(
        [(SITE, "gw-a"), (SITE, "gw-b"), ("elm-court", "gw-a")], topic_prefix=PREFIX
    ).accounts
    allowed = accounts.client_id_allowed
    assert allowed(USER_B, USER_B)
    assert allowed(USER_B, "steward-gw-gw-b") and allowed(USER_B, "steward-dev-gw-b")
    assert not allowed(USER_B, "steward-gw-gw-a")  # another gateway's
    assert not allowed(USER_B, USER_A)
    assert not allowed(USER_B, "gw-b") and not allowed(USER_B, "") and not allowed(USER_B, None)
    assert not allowed(USER_B, "cloud")  # nor the cloud's
    # gw-a is at two sites: its short id would name either, so each may use only its username.
    assert allowed(USER_A, USER_A) and allowed(USER_ELM, USER_ELM)
    assert not allowed(USER_A, "steward-gw-gw-a") and not allowed(USER_ELM, "steward-gw-gw-a")
    assert not allowed(USER_A, USER_ELM)
    # The cloud: any id of its own, none reserved for gateways.
    assert allowed(CLOUD, "steward-cloud") and allowed(CLOUD, "cloud-a1b2") and allowed(CLOUD, "")
    assert not allowed(CLOUD, "steward-gw-gw-b") and not allowed(CLOUD, "steward-dev-x")
    assert not allowed(CLOUD, USER_B) and not allowed(CLOUD, "x@y")
    assert not allowed("nobody", "anything")


@pytest.mark.parametrize(
    ("username", "password"),
    [(USER_A, "wrong-password"), (USER_A, ""), ("nobody", "whatever"), (None, None), (CLOUD, "guess")],
    ids=["wrong-password", "empty-password", "unknown-user", "anonymous", "cloud-guess"],
)
async def test_bad_credentials_are_refused(
    broker: AclBroker, username: str | None, password: str | None
) -> None:
    client = broker.client(username, client_id="intruder", password=password)
    with pytest.raises(MqttConnectError, match="refused"):
        await client.connect(timeout=2)
    assert not client.is_connected


async def test_one_gateways_password_does_not_open_another_account(broker: AclBroker) -> None:
    client = broker.client(USER_B, client_id="gw-b", password=broker.passwords[USER_A])
    with pytest.raises(MqttConnectError, match="refused"):
        await client.connect(timeout=2)


@pytest.mark.parametrize("password", [None, "wrong-password"], ids=["anonymous", "wrong-password"])
async def test_refused_connect_with_a_gateways_client_id_leaves_its_session_alone(
    broker: AclBroker, password: str | None
) -> None:
    """Before the fix amqtt 0.12 deleted B's session for a CONNECT it then refused: B stayed connected
    but silently got no more commands. Now both brokers authenticate before touching the session."""
    async with (
        broker.client(USER_B, client_id=B_UPLINK_ID) as b,
        broker.client(CLOUD, client_id="cloud") as cloud,
    ):
        await b.subscribe(f"{B.base}/down/#")
        for clean in (True, False):
            intruder = broker.client(
                None if password is None else USER_B, client_id=B_UPLINK_ID, password=password, clean=clean
            )
            with pytest.raises(MqttConnectError, match="refused"):
                await intruder.connect(timeout=2)
        await cloud.publish(B.commands, b"after the intrusion attempt")
        assert [m.payload for m in await until_topic(b, B.commands)] == [b"after the intrusion attempt"]
        assert b.is_connected
        assert b.reconnects == 0
