"""ModbusBus against the simulator server over real loopback sockets."""

from __future__ import annotations

import asyncio
import math
import struct
import time
from collections.abc import AsyncIterator

import pytest

from drivers.base import DeviceProtocolError, DeviceUnreachable
from drivers.hub import TransportHub
from drivers.points import Point, compile_points, read_plan, read_points
from drivers.transports import codec
from drivers.transports.modbus import ModbusBus, ReadBlock, coalesce
from simulators.modbus_server import ModbusSimServer, SimUnit
from steward.config import ModbusTcpTransport


@pytest.fixture
async def server() -> AsyncIterator[ModbusSimServer]:
    srv = ModbusSimServer("127.0.0.1", 0)
    srv.add_unit(SimUnit(1))
    srv.add_unit(SimUnit(2))
    async with srv:
        yield srv


def _transport(port: int, **kw: object) -> ModbusTcpTransport:
    return ModbusTcpTransport.model_validate(
        {"type": "modbus_tcp", "host": "127.0.0.1", "port": port, "timeout_s": 0.2, "retries": 1, **kw}
    )


@pytest.fixture
async def bus(server: ModbusSimServer) -> AsyncIterator[ModbusBus]:
    b = ModbusBus(_transport(server.port))
    yield b
    await b.close()


def test_coalesce_groups_neighbours_within_limits() -> None:
    assert coalesce([0, 1, 2, 3]) == [ReadBlock(0, 4)]
    assert coalesce([(0, 2), (4, 2), (100, 2)], max_gap=2) == [ReadBlock(0, 6), ReadBlock(100, 2)]
    # A float at 120 would push the block past 125 registers, so it starts a new read.
    assert coalesce([(0, 2), (120, 2), (124, 2)], max_gap=200) == [ReadBlock(0, 122), ReadBlock(124, 2)]
    assert coalesce([], max_gap=2) == []
    assert len(coalesce(range(0, 4000), max_count=2000)) == 2
    with pytest.raises(ValueError, match="cannot be read"):
        coalesce([(0, 126)])


async def test_reads_and_writes_reach_the_right_unit(server: ModbusSimServer, bus: ModbusBus) -> None:
    u1, u2 = server.unit(1), server.unit(2)
    u1.set("holding", 10, [11, 12, 13])
    u1.set("input", 0, [0x4366, 0])
    u2.set("discrete", 0, [True, False, True])
    assert await bus.read_holding(1, 10, 3, "dev1") == [11, 12, 13]
    assert await bus.read_input(1, 0, 2, "dev1") == [0x4366, 0]
    assert await bus.read_discrete(2, 0, 3, "dev2") == [True, False, True]
    await bus.write_coil(2, 5, True, "dev2")
    assert await bus.read_coils(2, 4, 3, "dev2") == [False, True, False]
    await bus.write_register(1, 20, 0xBEEF, "dev1")
    await bus.write_registers(2, 30, [1, 2, 3], "dev2")
    assert u1.get("holding", 20) == [0xBEEF]
    assert u2.get("holding", 30, 3) == [1, 2, 3]
    assert u1.get("holding", 30, 3) == [0, 0, 0]  # the other unit was not touched
    assert bus.stats.errors == 0


async def test_coalesced_read_is_one_request(server: ModbusSimServer, bus: ModbusBus) -> None:
    server.unit(1).set("input", 0, list(range(1, 11)))
    before = bus.stats.requests
    values = await bus.read_table("input", 1, [0, 1, (2, 2), 6, 9], "dev1")
    assert bus.stats.requests - before == 1
    assert values[0] == 1
    assert values[9] == 10
    before = bus.stats.requests
    await bus.read_table("input", 1, [0, 500], "dev1")
    assert bus.stats.requests - before == 2


async def test_exception_and_garbage_are_protocol_errors(server: ModbusSimServer, bus: ModbusBus) -> None:
    unit = server.unit(2)
    unit.mode = "exception"
    with pytest.raises(DeviceProtocolError, match=r"^dev2: .*exception 4 \(device failure\)"):
        await bus.read_holding(2, 0, 2, "dev2")
    unit.mode = "garbage"
    with pytest.raises(DeviceProtocolError, match=r"dev2: .*asked for 4 registers"):
        await bus.read_holding(2, 0, 4, "dev2")
    with pytest.raises(DeviceProtocolError, match="echoed"):
        await bus.write_register(2, 0, 7, "dev2")
    assert bus.stats.protocol_errors == 3
    # The neighbour on the same bus is unaffected.
    assert await bus.read_holding(1, 0, 1, "dev1") == [0]


async def test_illegal_address_is_protocol_error(bus: ModbusBus, server: ModbusSimServer) -> None:
    server.unit(1).size = 100
    with pytest.raises(DeviceProtocolError, match="illegal data address"):
        await bus.read_holding(1, 99, 2, "dev1")


async def test_dead_unit_times_out_with_bounded_retries(server: ModbusSimServer, bus: ModbusBus) -> None:
    server.unit(2).mode = "dead"
    started = time.monotonic()
    # ModbusBus puts no timer of its own around a request: pymodbus' reply timeout must end it.
    # The test's bound turns a hang into a failure here instead of a stuck suite.
    with pytest.raises(DeviceUnreachable, match=r"dev2: .*no answer from unit 2"):
        async with asyncio.timeout(5):
            await bus.read_holding(2, 0, 1, "dev2")
    elapsed = time.monotonic() - started
    assert 0.35 < elapsed < 1.5  # two attempts of 0.2 s plus a short backoff
    assert bus.stats.timeouts == 2
    assert bus.stats.retries == 1
    server.unit(2).mode = "ok"
    assert await bus.read_holding(2, 0, 1, "dev2") == [0]


async def test_reconnects_after_the_link_drops(server: ModbusSimServer, bus: ModbusBus) -> None:
    assert await bus.read_holding(1, 0, 1, "dev1") == [0]
    port = server.port
    await server.stop()
    with pytest.raises(DeviceUnreachable, match="dev1"):
        await bus.read_holding(1, 0, 1, "dev1")
    restarted = ModbusSimServer("127.0.0.1", port)
    restarted.add_unit(SimUnit(1)).set("holding", 0, [42])
    async with restarted:
        assert await bus.read_holding(1, 0, 1, "dev1") == [42]
    assert bus.stats.connects >= 2


async def test_concurrent_requests_are_serialised(server: ModbusSimServer, bus: ModbusBus) -> None:
    for u in (1, 2):
        server.unit(u).set("holding", 0, [u] * 10)
    results = await asyncio.gather(*(bus.read_holding(1 + i % 2, 0, 10, f"d{i}") for i in range(40)))
    assert all(r == [1 + i % 2] * 10 for i, r in enumerate(results))


async def test_hub_shares_one_bus_and_close_refuses_later_requests(server: ModbusSimServer) -> None:
    hub = TransportHub()
    a = hub.modbus(_transport(server.port, unit=1))
    b = hub.modbus(_transport(server.port, unit=2))
    assert a is b
    assert await a.read_holding(2, 0, 1, "dev2") == [0]
    await hub.close()
    with pytest.raises(DeviceUnreachable, match="closed"):
        await a.read_holding(1, 0, 1, "dev1")


async def test_read_plan_decodes_as_the_codec_does(server: ModbusSimServer, bus: ModbusBus) -> None:
    """Every type in every word order, scaled or not, in both tables: the precompiled plan (one pack
    per block, values unpacked in place) gives exactly what codec.decode gives register by register."""
    unit = server.unit(1)
    points: list[Point] = []
    address = {"input": 0, "holding": 0}
    values = {
        "int16": -1234,
        "uint16": 54321,
        "int32": -123456789,
        "uint32": 3_000_000_000,
        "int64": -(2**40) - 7,
        "uint64": 2**63 + 5,
        "float32": -3.25,
        "float64": 1234.5678,
    }
    for i, (dtype, value) in enumerate(values.items()):
        for j, order in enumerate(codec.WORD_ORDERS):
            table = "input" if (i + j) % 2 else "holding"
            scale, offset = ((0.1, -40.0), (1.0, 0.0))[j % 2]
            regs = codec.encode(value, dtype, order)  # type: ignore[arg-type]
            at = address[table]
            unit.set(table, at, regs)  # type: ignore[arg-type]
            points.append(
                Point(
                    name=f"p_{dtype}_{order.lower()}",
                    table=table,
                    address=at,
                    type=dtype,  # type: ignore[arg-type]
                    order=order,
                    scale=scale,
                    offset=offset,
                )  # type: ignore[arg-type]
            )
            address[table] = at + len(regs) + (3 if j == 1 else 0)  # some holes to coalesce over
    plan = compile_points(points)
    before = bus.stats.requests
    got = await read_plan(bus, 1, plan, "meter")
    assert bus.stats.requests - before == len(plan.reads) == 2  # one block per table
    for p in points:
        regs = unit.get(p.table, p.address, p.length)
        assert got[p.name] == codec.decode(regs, p.type, p.order, p.scale, p.offset), p.name
    assert list(got) == [p.name for p in points if p.table == points[0].table] + [
        p.name for p in points if p.table != points[0].table
    ]
    assert await read_points(bus, 1, points, "meter") == got


def test_block_layout_matches_decode_raw() -> None:
    for dtype in codec.DATA_TYPES:
        for order in codec.WORD_ORDERS:
            n = codec.register_count(dtype)  # type: ignore[arg-type]
            regs = [(0x1357 * (k + 3)) & 0xFFFF for k in range(n)]
            little, fmt = codec.block_layout(dtype, order)  # type: ignore[arg-type]
            block = struct.pack(("<" if little else ">") + "H" * (n + 1), 0xFFFF, *regs)
            raw = fmt.unpack_from(block, 2)[0]
            expected = codec.decode_raw(regs, dtype, order)  # type: ignore[arg-type]
            assert raw == expected or (math.isnan(raw) and math.isnan(expected)), (dtype, order)
