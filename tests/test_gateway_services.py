"""A failing gateway service is logged and started again; it never stops the rest of the gateway.

All of them used to run as plain tasks of the gateway's one TaskGroup, so one exception anywhere (a bug
in the uplink, a full disk under a command's record) cancelled everything, fire linkage included.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from edge.buffer import EventBuffer, EventDraft
from edge.commands import CommandHandler
from edge.uplink import Uplink
from protocol.models import utcnow
from steward.broker import EmbeddedBroker
from steward.mqtt import MqttClient
from tests.stack import site_config
from tests.test_store_and_forward import (
    _eq,
    assert_exactly_once_in_order,
    buffered_depth,
    cloud,
    cloud_rows,
    gateway_in_process,
    wait_until,
)

pytestmark = pytest.mark.timeout(120)


async def test_a_failed_uplink_and_a_failed_command_leave_the_gateway_running(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_next_batch = Uplink._next_batch
    calls = 0

    async def next_batch_failing_once(self: Uplink) -> Any:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("uplink bug")
        return await real_next_batch(self)

    async def handle_failing(self: CommandHandler, payload: bytes) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Uplink, "_next_batch", next_batch_failing_once)
    monkeypatch.setattr(CommandHandler, "handle", handle_failing)
    async with EmbeddedBroker(port=0) as broker:
        site = site_config(tmp_path, broker.port, [])
        async with await EventBuffer.open(site.buffer) as buf:
            await buf.record_many(
                [EventDraft("meter-1", "meter.reading", utcnow(), {"i": i}) for i in range(50)]
            )
        db = tmp_path / "cloud.db"
        with capture_logs() as logs:
            async with cloud(db, broker.port), gateway_in_process(site) as gw:
                async with MqttClient("127.0.0.1", broker.port, client_id="t-cloud-cmd") as cmd:
                    await cmd.publish(gw.topics.commands, b'{"any": "command"}', qos=1)
                await wait_until(lambda: _eq(buffered_depth(gw), 0), 30, "buffer drained after the restart")
                await wait_until(
                    _true_when(lambda: gw.service_failures["command"] == 1), 10, "command failed"
                )
                assert gw.service_failures == {"uplink": 1, "command": 1}
                assert gw.health()["service_failures"] == {"uplink": 1, "command": 1}
    assert_exactly_once_in_order(cloud_rows(db), at_least=50)
    failed = [e for e in logs if e["event"] == "gateway.service_failed"]
    assert [(e["service"], e["restart_in_s"], e["log_level"]) for e in failed] == [("uplink", 1.0, "error")]
    assert any(e["event"] == "command.handling_failed" for e in logs)


def _true_when(check: Any) -> Any:
    async def pred() -> bool:
        return bool(check())

    return pred
