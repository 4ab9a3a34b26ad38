"""Hostile input, generated: every decoder and loader answers garbage with its own clear error type.

Wire decoders, the config loader and the device-level parsers run under hypothesis; the gateway's
command handler and the cloud's ingest loop take mutated real messages and must keep working.
Findings are fixed in the code and kept here as explicit examples.
"""

from __future__ import annotations

import asyncio
import json
import random
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from drivers.bthome import BTHomeError, parse_service_data
from drivers.transports.codec import CodecError, decode
from drivers.wiegand import WiegandError, parse_wiegand
from edge.commands import CommandHandler
from protocol import BatchAck, Command, CommandResult, EventBatch, GatewayStatus, new_id
from protocol.credentials import CredentialSync
from protocol.models import utcnow
from steward.config import ConfigError, load_site_config, parse_site_config

WIRE = [EventBatch, BatchAck, Command, CommandResult, GatewayStatus, CredentialSync]
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=30),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=5)
    ),
    max_leaves=25,
)


@FUZZ
@given(payload=st.binary(max_size=600))
@example(payload=b"")
@example(payload=b"\xff\xfe")
@example(payload=b'{"v": 1, "events": [' + b"[" * 2000)
def test_wire_models_reject_random_bytes_with_validation_error(payload: bytes) -> None:
    for model in WIRE:
        with pytest.raises(ValidationError):
            model.model_validate_json(payload)


@FUZZ
@given(
    doc=st.dictionaries(
        st.sampled_from(
            [
                "v",
                "batch_id",
                "site_id",
                "gateway_id",
                "sent_at",
                "events",
                "id",
                "device_id",
                "action",
                "args",
                "expires_at",
                "issued_at",
            ]
        ),
        json_values,
        max_size=8,
    )
)
def test_wire_models_reject_wrong_shapes(doc: dict[str, Any]) -> None:
    payload = json.dumps(doc, allow_nan=True)
    for model in WIRE:
        try:
            model.model_validate_json(payload)
        except ValidationError:
            continue


@FUZZ
@given(text=st.text(max_size=400))
@example(text="devices: [{id: a, kind: barrier_gate, transport: {type: modbus_tcp, host: x, unit: 999999}}]")
@example(text="site_id: !!python/object/apply:os.system ['true']")
@example(text="&a [*a]")
def test_config_loader_answers_only_config_errors(
    tmp_path_factory: pytest.TempPathFactory, text: str
) -> None:
    path = tmp_path_factory.mktemp("cfg") / "site.yaml"
    path.write_text(text, encoding="utf-8")
    message = ""
    try:
        load_site_config(path)
    except ConfigError as exc:
        message = str(exc)
    if message:
        assert message.startswith(str(path))
        assert "Traceback" not in message


@FUZZ
@given(data=json_values)
def test_parsed_config_errors_are_config_errors(data: Any) -> None:
    try:
        parse_site_config(data, "fuzz.yaml")
    except ConfigError:
        pass


@FUZZ
@given(payload=st.binary(max_size=64))
@example(payload=b"\x40")
@example(payload=b"\x40\x02")
@example(payload=b"\x41\x00\x00\x00\x00\x00\x00\x00")
def test_bthome_parser_answers_only_bthome_errors(payload: bytes) -> None:
    try:
        packet = parse_service_data(payload)
    except BTHomeError:
        return
    assert isinstance(packet.values, dict)


@FUZZ
@given(value=st.integers(min_value=-(2**70), max_value=2**70), bits=st.integers(min_value=-5, max_value=80))
def test_wiegand_parser_answers_only_wiegand_errors(value: int, bits: int) -> None:
    try:
        card = parse_wiegand(value, bits)
    except WiegandError:
        return
    assert card.bits in (26, 34)


@FUZZ
@given(
    registers=st.lists(st.integers(min_value=-70000, max_value=70000), max_size=6),
    dtype=st.sampled_from(["int16", "uint16", "int32", "uint32", "float32", "float64", "int64", "nonsense"]),
    order=st.sampled_from(["ABCD", "DCBA", "BADC", "CDAB", "XYZW"]),
)
def test_register_decoder_answers_only_codec_errors(registers: list[int], dtype: str, order: str) -> None:
    try:
        decode(registers, dtype, order)  # type: ignore[arg-type]
    except CodecError:
        pass


# ---- the gateway's command handler on mutated real commands ----------------------------------------
def _valid_command() -> dict[str, Any]:
    now = utcnow()
    return json.loads(
        Command(
            id=new_id(),
            site_id="s",
            gateway_id="gw-1",
            device_id="gate",
            action="open",
            issued_at=now,
            expires_at=now + timedelta(seconds=30),
        ).model_dump_json()
    )


def _mutate(doc: Any, rng: random.Random, depth: int = 0) -> Any:
    """Flip types, drop and add keys, truncate strings: the mistakes and attacks real input contains."""
    if isinstance(doc, dict):
        out = dict(doc)
        for key in list(out):
            roll = rng.random()
            if roll < 0.15:
                del out[key]
            elif roll < 0.5 and depth < 3:
                out[key] = _mutate(out[key], rng, depth + 1)
        if rng.random() < 0.2:
            out[rng.choice(["extra", "__proto__", "v", "signature"])] = rng.choice(
                [None, 1, "x" * 70, [], {}]
            )
        return out
    choices: list[Any] = [None, -1, 2**64, 1.5e308, "", "x" * 300, [], {}, True, "../../etc", "\u0000"]
    if isinstance(doc, str) and doc and rng.random() < 0.5:
        return doc[: rng.randrange(len(doc))]
    return rng.choice(choices)


async def test_command_handler_survives_mutated_commands() -> None:
    results: list[CommandResult] = []
    seen: set[str] = set()

    async def publish(result: CommandResult) -> None:
        results.append(result)

    async def remember(command_id: str, _expires: Any) -> bool:
        if command_id in seen:
            return False
        seen.add(command_id)
        return True

    handler = CommandHandler(gateway_id="gw-1", drivers={}, publish_result=publish, remember=remember)
    rng = random.Random(20261123)
    for _ in range(400):
        payload = json.dumps(_mutate(_valid_command(), rng)).encode()
        answer = await asyncio.wait_for(handler.handle(payload), 5)
        # Nothing here names a device this gateway has: nothing may ever be accepted or executed.
        assert answer is None or answer.status.value in ("rejected", "expired")
    garbage = [b"", b"\x00" * 10, b"[]", b"{}", b"null", b"{" * 10_000, b"x" * (65 * 1024)]
    for payload in garbage:
        assert await handler.handle(payload) is None
    assert all(r.status.value in ("rejected", "expired") for r in results)
    assert handler.stats.malformed >= len(garbage)


# ---- the cloud's ingest loop on mutated real batches ------------------------------------------------
async def test_cloud_ingest_keeps_running_through_mutated_batches(tmp_path: Path) -> None:
    import httpx

    from cloud.main import serve
    from cloud.settings import CloudSettings
    from protocol import Topics
    from steward.broker import EmbeddedBroker, free_port
    from steward.mqtt import MqttClient

    async with EmbeddedBroker(port=0) as broker:
        settings = CloudSettings(
            database_url=f"sqlite+aiosqlite:///{tmp_path / 'cloud.db'}",
            broker_port=broker.port,
            http_port=free_port(),
            client_id="cloud-fuzz",
        )
        ready = asyncio.Event()
        async with asyncio.TaskGroup() as tg:
            cloud = tg.create_task(serve(settings, ready=ready))
            await asyncio.wait_for(ready.wait(), 20)
            topics = Topics("steward", "s", "gw-1")
            now = utcnow()

            def batch(n: int = 2) -> dict[str, Any]:
                return json.loads(
                    EventBatch(
                        batch_id=new_id(),
                        site_id="s",
                        gateway_id="gw-1",
                        sent_at=now,
                        events=[
                            {
                                "id": new_id(),
                                "seq": i + 1,
                                "device_id": "gate",
                                "type": "gate.opened",
                                "ts": now,
                                "received_at": now,
                                "data": {"state": "open"},
                            }
                            for i in range(n)
                        ],
                    ).model_dump_json()
                )

            rng = random.Random(7)
            async with MqttClient(broker.host, broker.port, client_id="fuzzer") as gw:
                await gw.subscribe(topics.acks)
                for _ in range(150):
                    await gw.publish(topics.events, json.dumps(_mutate(batch(), rng)).encode())
                for payload in (b"\xff" * 100, b"{" * 5000, b"[]" * 10, b"x" * (1024 * 1024 + 10)):
                    await gw.publish(topics.events, payload)
                # The loop still works: a good batch after all that is stored and acknowledged.
                good = batch(3)
                await gw.publish(topics.events, json.dumps(good).encode())
                deadline = asyncio.get_running_loop().time() + 20
                while True:
                    msg = await gw.get_message(timeout=max(0.1, deadline - asyncio.get_running_loop().time()))
                    ack = BatchAck.model_validate_json(msg.payload)
                    if ack.batch_id == good["batch_id"]:
                        assert ack.stored == 3
                        break
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{settings.http_port}") as http:
                r = await http.get("/metrics")
                if r.status_code == 200:
                    assert "rejected" in r.text
            cloud.cancel()
