"""Commands the gateway must refuse, against a real gate simulator on a real Modbus TCP socket.

Each test drives :class:`edge.commands.CommandHandler` wired as the gateway wires it: a real
:class:`edge.buffer.EventBuffer` on disk as the replay guard, a real barrier gate driver, and
:func:`edge.verify.make_verifier` with the cloud's public key. "The gate never moved" is read from
the simulator: the coil pulses it was sent and its motor state.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from drivers.hub import TransportHub
from drivers.registry import create_driver
from edge.buffer import EventBuffer
from edge.commands import MAX_COMMAND_BYTES, CommandHandler
from edge.verify import make_verifier
from protocol import Command, CommandResult, CommandStatus
from protocol.models import utcnow
from protocol.signing import generate_private_key, public_key_b64, sign_command
from simulators.barrier_gate import BarrierGateSimulator
from simulators.modbus_server import free_port
from simulators.registry import run_site_simulators
from steward.config import BufferConfig, SiteConfig, parse_site_config

CLOUD_KEY = generate_private_key()
ROGUE_KEY = generate_private_key()
PUB = public_key_b64(CLOUD_KEY)
SITE_ID, GATEWAY_ID, GATE = "oak-garden", "gw-1", "gate-north"


def _site(port: int) -> SiteConfig:
    return parse_site_config(
        {
            "site_id": SITE_ID,
            "site_name": "Oak Garden",
            "gateway_id": GATEWAY_ID,
            "devices": [
                {
                    "id": GATE,
                    "kind": "barrier_gate",
                    "transport": {"type": "modbus_tcp", "host": "127.0.0.1", "port": port, "timeout_s": 0.5},
                    "options": {"pulse_s": 0.02, "travel_timeout_s": 2.0, "confirm_interval_s": 0.02},
                }
            ],
        }
    )


@dataclass
class Rig:
    site: SiteConfig
    gate: BarrierGateSimulator
    hub: TransportHub
    buffer_config: BufferConfig
    buffer: EventBuffer
    handler: CommandHandler
    published: list[CommandResult] = field(default_factory=list)

    def make_handler(self, public_key: str | None = PUB, accepted_after_s: float = 0.0) -> CommandHandler:
        async def publish(result: CommandResult) -> None:
            self.published.append(result)

        driver = create_driver(self.site.device(GATE), self.hub, _ignore)
        return CommandHandler(
            gateway_id=GATEWAY_ID,
            drivers={GATE: driver},
            publish_result=publish,
            remember=self.buffer.remember_command,
            verify=make_verifier(public_key, site_id=SITE_ID),
            accepted_after_s=accepted_after_s,
        )

    async def restart(self) -> None:
        """What a gateway restart does to the replay guard: close the buffer file, open it again."""
        await self.buffer.close()
        self.buffer = await EventBuffer.open(self.buffer_config)
        self.handler = self.make_handler()

    def assert_gate_never_moved(self) -> None:
        assert self.gate.commands == []
        assert self.gate.gate_state == "closed"


async def _ignore(reading: Any) -> None:
    return None


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    site = _site(free_port())
    buffer_config = BufferConfig(path=tmp_path / "edge.db")
    async with run_site_simulators(site, travel_time_s=0.05) as sims:
        gate = sims[GATE]
        assert isinstance(gate, BarrierGateSimulator)
        hub = TransportHub()
        buffer = await EventBuffer.open(buffer_config)
        rig = Rig(site, gate, hub, buffer_config, buffer, handler=None)  # type: ignore[arg-type]
        rig.handler = rig.make_handler()
        try:
            yield rig
        finally:
            await rig.buffer.close()
            await hub.close()


def command(**changes: Any) -> Command:
    now = utcnow()
    fields: dict[str, Any] = {
        "id": "01JCMD0000000000000000000A",
        "site_id": SITE_ID,
        "gateway_id": GATEWAY_ID,
        "device_id": GATE,
        "action": "open",
        "issued_at": now,
        "expires_at": now + timedelta(seconds=30),
        "issued_by": "operator",
    }
    return Command(**{**fields, **changes})


def signed(**changes: Any) -> bytes:
    return sign_command(command(**changes), CLOUD_KEY).to_bytes()


async def test_properly_signed_command_opens_the_gate(rig: Rig) -> None:
    # The gate travels for longer than the handler waits before announcing: "accepted" goes out alone.
    result = await rig.handler.handle(signed())
    assert result is not None and result.status is CommandStatus.SUCCEEDED, result
    assert [r.status for r in rig.published] == [CommandStatus.ACCEPTED, CommandStatus.SUCCEEDED]
    assert rig.published[1].accepted_at is None
    assert rig.gate.commands == ["open"]
    assert rig.gate.gate_state == "open"


async def test_an_action_that_ends_before_it_is_announced_sends_one_result_with_its_acceptance(
    rig: Rig,
) -> None:
    handler = rig.make_handler(accepted_after_s=10)
    before = utcnow()
    result = await handler.handle(signed())
    assert result is not None and result.status is CommandStatus.SUCCEEDED, result
    assert [r.status for r in rig.published] == [CommandStatus.SUCCEEDED]
    assert result.accepted_at is not None and before <= result.accepted_at <= result.at
    assert rig.gate.gate_state == "open"


def _tampered() -> bytes:
    raw = json.loads(signed())
    raw["expires_at"] = (utcnow() + timedelta(minutes=10)).isoformat()  # stretch the window
    return json.dumps(raw).encode()


def _replayed_under_new_id() -> bytes:
    raw = json.loads(signed())
    raw["id"] = "01JCMD0000000000000000000Z"  # dodge the replay guard with a fresh id
    return json.dumps(raw).encode()


REFUSALS: dict[str, tuple[Any, CommandStatus, str]] = {
    "unsigned": (lambda: command().to_bytes(), CommandStatus.REJECTED, "bad signature: command is unsigned"),
    "garbage-signature": (
        lambda: command(signature="AAAA").to_bytes(),
        CommandStatus.REJECTED,
        "bad signature: signature must be 64 bytes",
    ),
    "tampered-expiry": (_tampered, CommandStatus.REJECTED, "bad signature: signature does not verify"),
    "new-id-old-signature": (
        _replayed_under_new_id,
        CommandStatus.REJECTED,
        "bad signature: signature does not verify",
    ),
    "signed-by-another-key": (
        lambda: sign_command(command(), ROGUE_KEY).to_bytes(),
        CommandStatus.REJECTED,
        "bad signature: signature does not verify",
    ),
    "for-another-gateway": (
        lambda: signed(gateway_id="gw-2"),
        CommandStatus.REJECTED,
        "command is for gateway 'gw-2', not this one",
    ),
    "for-same-gateway-id-at-another-site": (
        lambda: signed(site_id="elm-court"),
        CommandStatus.REJECTED,
        "command is for site 'elm-court', not this one",
    ),
    "expired": (
        lambda: signed(issued_at=utcnow() - timedelta(minutes=2), expires_at=utcnow() - timedelta(minutes=1)),
        CommandStatus.EXPIRED,
        "expired before the gateway could act on it",
    ),
    "valid-for-a-day": (
        lambda: signed(expires_at=utcnow() + timedelta(days=1)),
        CommandStatus.REJECTED,
        "valid for longer than",
    ),
    "unknown-action": (lambda: signed(action="explode"), CommandStatus.REJECTED, "explode"),
}


@pytest.mark.parametrize("case", list(REFUSALS))
async def test_refused_and_the_gate_never_moves(rig: Rig, case: str) -> None:
    make, status, reason = REFUSALS[case]
    result = await rig.handler.handle(make())
    assert result is not None
    assert result.status is status
    assert result.reason is not None and reason in result.reason
    assert [r.status for r in rig.published] == [status]  # never even "accepted"
    rig.assert_gate_never_moved()


async def test_replay_is_refused_and_the_gate_moves_once(rig: Rig) -> None:
    payload = signed()
    first = await rig.handler.handle(payload)
    assert first is not None and first.status is CommandStatus.SUCCEEDED
    again = await rig.handler.handle(payload)
    assert again is not None and again.status is CommandStatus.REJECTED
    assert again.reason == "replayed command id: already seen"
    assert rig.gate.commands == ["open"]


async def test_replay_is_refused_after_a_gateway_restart(rig: Rig) -> None:
    close = signed(id="01JCMD0000000000000000000C", action="close")
    payload = signed()
    assert (r := await rig.handler.handle(payload)) is not None and r.status is CommandStatus.SUCCEEDED
    assert (r := await rig.handler.handle(close)) is not None and r.status is CommandStatus.SUCCEEDED
    assert rig.gate.gate_state == "closed"

    await rig.restart()
    again = await rig.handler.handle(payload)
    assert again is not None and again.status is CommandStatus.REJECTED
    assert again.reason == "replayed command id: already seen"
    assert rig.gate.commands == ["open", "close"]
    assert rig.gate.gate_state == "closed"


async def test_malformed_payloads_are_refused(rig: Rig) -> None:
    # Unparseable: nobody to answer, nothing done.
    assert await rig.handler.handle(b"{not json") is None
    # Parseable enough to name the command: rejected with the problem, so the operator sees why.
    partial = json.dumps({"id": "01JCMD0000000000000000000M", "gateway_id": GATEWAY_ID, "device_id": GATE})
    result = await rig.handler.handle(partial.encode())
    assert result is not None and result.status is CommandStatus.REJECTED
    assert result.reason is not None and result.reason.startswith("malformed command")
    # An extra field (e.g. a smuggled "override": true) is malformed too, signature or not.
    extra = json.loads(signed(id="01JCMD0000000000000000000N"))
    extra["override"] = True
    result = await rig.handler.handle(json.dumps(extra).encode())
    assert result is not None and result.status is CommandStatus.REJECTED
    assert rig.handler.stats.malformed == 3
    rig.assert_gate_never_moved()


async def test_oversized_payload_is_dropped_before_parsing(rig: Rig) -> None:
    # Validly signed, but over the size limit: refused before any parsing or signature work.
    payload = signed(issued_by="x" * 128, args={"pad": "y" * MAX_COMMAND_BYTES})
    assert len(payload) > MAX_COMMAND_BYTES
    assert await rig.handler.handle(payload) is None
    assert rig.handler.stats.malformed == 1
    assert rig.published == []
    rig.assert_gate_never_moved()


async def test_without_a_key_unsigned_commands_run_with_one_warning(rig: Rig) -> None:
    handler = rig.make_handler(public_key=None)
    with capture_logs() as logs:
        first = await handler.handle(command().to_bytes())
        second = await handler.handle(command(id="01JCMD0000000000000000000B", action="close").to_bytes())
    assert first is not None and first.status is CommandStatus.SUCCEEDED
    assert second is not None and second.status is CommandStatus.SUCCEEDED
    assert [e["event"] for e in logs].count("command.signatures_not_checked") == 1
    assert rig.gate.commands == ["open", "close"]


def test_a_malformed_key_fails_at_start_up() -> None:
    with pytest.raises(ValueError, match="command_public_key"):
        make_verifier("not-a-key")
