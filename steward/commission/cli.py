"""`steward commission`: from a box of wired devices to a checked site config, on the installer's laptop.

Commands (each prints Rich tables; ``--json`` where a machine reads the result)::

    scan modbus   which units answer on a TCP gateway or RS-485 line, and what model they are
    scan ble      which BLE sensors are in range, with their decoded readings
    probe         every point of one configured device, raw and scaled
    test          one action on one device (open a gate, unlock a door), state before and after
    add           append a device to the site config (validated, comments kept)
    config check  validate the config; with --live, check every device answers as configured
    register      register the gateway with the cloud; its credentials go into the config (0600)
    report        the commissioning report (JSON + Markdown) from the commissioning log; --upload
                  also sends it to the cloud

Exit codes: 0 done, 1 something checked failed (a device, an action, a live check), 2 bad
input (config, option, unknown device).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import os
import sys
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, NoReturn, TypeVar

import structlog
import typer
import yaml
from bleak.backends.scanner import BaseBleakScanner
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from steward.config import (
    ConfigError,
    ModbusRtuTransport,
    ModbusTcpTransport,
    SiteConfig,
    load_site_config,
)

__all__ = ["CommissionHooks", "commission_app"]

T = TypeVar("T")


@dataclass(slots=True)
class CommissionHooks:
    """What tests (or a demo) swap in: pass as ``obj=`` to the Typer app. ``ble_backend`` is a bleak
    scanner backend class (``None`` = the platform's radio)."""

    ble_backend: type[BaseBleakScanner] | None = None


commission_app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
    help="Commission a site: scan buses, probe and test devices, build the config, write the report.",
)
scan_app = typer.Typer(no_args_is_help=True, help="Find devices on a Modbus bus or over BLE.")
config_app = typer.Typer(no_args_is_help=True, help="Check a site configuration.")
commission_app.add_typer(scan_app, name="scan")
commission_app.add_typer(config_app, name="config")

ConfigOpt = Annotated[Path, typer.Option("--config", "-c", help="Site configuration YAML")]
OptionalConfig = Annotated[
    Path | None, typer.Option("--config", "-c", help="Site config; results go to its commissioning log")
]
Installer = Annotated[
    str | None,
    typer.Option("--installer", envvar="STEWARD_INSTALLER", help="Who is commissioning (for the log)"),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of tables")]
CloudOpt = Annotated[
    str | None,
    typer.Option(
        "--cloud", envvar="STEWARD_CLOUD_URL", help="The cloud's address, e.g. https://cloud.example.com"
    ),
]
TokenOpt = Annotated[
    str | None,
    typer.Option(
        "--token",
        envvar="STEWARD_TOKEN",
        show_envvar=True,
        help="An installer's API token for this site (prefer the environment variable: "
        "a token on the command line lands in the shell history)",
    ),
]
CloudTimeout = Annotated[float, typer.Option("--cloud-timeout", help="Seconds to wait for the cloud")]


# ---- plumbing --------------------------------------------------------------------------------------
def _out() -> Console:
    return Console(width=None if sys.stdout.isatty() else 160, highlight=False)


def _err() -> Console:
    return Console(stderr=True, width=None if sys.stderr.isatty() else 160, highlight=False)


def _fail(message: str, code: int = 2) -> NoReturn:
    _err().print(f"[red]{message}[/red]", markup=True, highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def _hooks(ctx: typer.Context) -> CommissionHooks:
    obj = ctx.obj
    return obj if isinstance(obj, CommissionHooks) else CommissionHooks()


@contextlib.contextmanager
def _quiet_logs() -> Iterator[None]:
    """Expected failures (dead units during a scan) are the result here, not log noise."""
    previous = structlog.get_config()
    structlog.configure(
        wrapper_class=structlog.make_filtering_bound_logger(logging.ERROR),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
    )
    pymodbus = logging.getLogger("pymodbus")
    level = pymodbus.level
    pymodbus.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        pymodbus.setLevel(level)
        structlog.configure(**previous)


def _run(coro: Coroutine[Any, Any, T]) -> T:
    from drivers.base import DriverError
    from steward.commission._ble import BleScanError
    from steward.commission._device import CommissionError

    with _quiet_logs():
        try:
            return asyncio.run(coro)
        except KeyboardInterrupt:
            _fail("interrupted", 130)
        except (CommissionError, ConfigError) as exc:
            _fail(str(exc), 2)
        except (DriverError, BleScanError, OSError) as exc:
            _fail(str(exc), 1)
        except Exception as exc:  # an installer must never see a traceback; STEWARD_DEBUG=1 to get one
            if os.environ.get("STEWARD_DEBUG"):
                raise
            _fail(
                f"unexpected error ({type(exc).__name__}): {exc}; rerun with STEWARD_DEBUG=1 for details", 3
            )


def _load(path: Path) -> SiteConfig:
    try:
        return load_site_config(path)
    except ConfigError as exc:
        _fail(str(exc), 2)


def _device(site: SiteConfig, device_id: str, path: Path) -> Any:
    try:
        return site.device(device_id)
    except KeyError:
        known = ", ".join(d.id for d in site.devices) or "none"
        _fail(f"{path}: no device {device_id!r}; configured: {known}", 2)


def _log(
    config: Path | None, action: str, *, installer: str | None, ok: bool, summary: str, **details: Any
) -> None:
    if config is None:
        return
    from steward.commission._log import CommissioningLog

    try:
        CommissioningLog.for_config(config).append(
            action, installer=installer, ok=ok, summary=summary, **details
        )
    except (OSError, ValueError) as exc:
        _err().print(f"[yellow]warning: not recorded in the commissioning log: {exc}[/yellow]")


def _print_json(data: Any) -> None:
    typer.echo(json.dumps(data, indent=2, ensure_ascii=False, default=str))


def _mark(ok: bool | None) -> str:
    return {True: "[green]pass[/green]", False: "[red]FAIL[/red]", None: "[dim]skip[/dim]"}[ok]


# ---- scan modbus -----------------------------------------------------------------------------------
@scan_app.command("modbus")
def scan_modbus(
    *,
    host: Annotated[str | None, typer.Option(help="Modbus TCP gateway host")] = None,
    port: Annotated[int, typer.Option(help="Modbus TCP port")] = 502,
    serial: Annotated[
        str | None, typer.Option(help="RS-485 serial port, e.g. /dev/ttyUSB0 (Modbus RTU)")
    ] = None,
    baud: Annotated[int, typer.Option(help="Serial baud rate")] = 9600,
    parity: Annotated[str, typer.Option(help="Serial parity: N, E or O")] = "N",
    units: Annotated[str, typer.Option(help="Unit ids to try: 1-10, 1,3,5-7")] = "1-32",
    timeout: Annotated[float, typer.Option(help="Seconds to wait for each unit")] = 0.3,
    save: Annotated[Path | None, typer.Option(help="Save the result as JSON (for `add --from-scan`)")] = None,
    config: OptionalConfig = None,
    installer: Installer = None,
    as_json: JsonOpt = False,
) -> None:
    """Try each unit id on a bus; list what answered, the model it looks like, and what did not answer."""
    from steward.commission._modbus import UnitResult, parse_units, scan_units

    if (host is None) == (serial is None):
        _fail("give either --host (Modbus TCP) or --serial (Modbus RTU), not both or neither")
    try:
        unit_ids = parse_units(units)
    except ValueError as exc:
        _fail(f"--units: {exc}")
    if not 0.01 <= timeout <= 30:
        _fail("--timeout must be between 0.01 and 30 seconds")
    transport: ModbusTcpTransport | ModbusRtuTransport
    try:
        if host is not None:
            transport = ModbusTcpTransport(
                type="modbus_tcp", host=host, port=port, timeout_s=timeout, retries=0
            )
        else:
            if 0 in unit_ids:
                _fail("--units: unit 0 is broadcast on RS-485 and never answers; start at 1")
            transport = ModbusRtuTransport(
                type="modbus_rtu",
                port=serial or "",
                baudrate=baud,
                parity=parity.upper(),  # type: ignore[arg-type]
                timeout_s=timeout,
                retries=0,
            )
    except ValueError as exc:
        _fail(f"bad bus settings: {exc}")

    err = _err()
    progress = Progress(
        TextColumn("scanning {task.fields[bus]}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.description}"),
        TimeElapsedColumn(),
        console=err,
        transient=err.is_terminal,
    )

    async def main() -> list[UnitResult]:
        with progress:
            task = progress.add_task("", total=len(unit_ids), bus=transport.bus)

            def step(result: UnitResult) -> None:
                progress.update(task, advance=1, description=f"unit {result.unit}: {result.status}")

            return await scan_units(transport, unit_ids, step)

    started = datetime.now(UTC).replace(microsecond=0).isoformat()
    results = _run(main())
    answered = [r for r in results if r.answered]
    recognised = [r for r in answered if r.match]
    transport_dict = transport.model_dump(exclude={"unit", "timeout_s", "retries"})
    document = {
        "scanned_at": started,
        "bus": transport.bus,
        "transport": transport_dict,
        "units_tried": unit_ids,
        "units": [r.as_dict() for r in results if r.answered],
        "no_answer": [r.unit for r in results if not r.answered],
    }
    unknown = len(answered) - len(recognised)
    summary = (
        f"{len(answered)} answered ({len(recognised)} recognised, {unknown} unknown model), "
        f"{len(results) - len(answered)} no answer"
    )
    if save is not None:
        try:
            save.write_text(json.dumps(document, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        except OSError as exc:
            _fail(f"--save {save}: {exc.strerror}", 2)
    _log(
        config,
        "scan_modbus",
        installer=installer,
        ok=True,
        summary=summary,
        bus=transport.bus,
        units=document["units"],
    )
    if as_json:
        _print_json(document)
        return
    out = _out()
    table = Table(title=f"Modbus scan of {transport.bus}, units {units}")
    for col in ("Unit", "Status", "Kind / model", "Evidence"):
        table.add_column(col)
    for r in results:
        if r.match:
            fp = r.match.fingerprint
            hints = ", ".join(f"{k}={v}" for k, v in r.match.hints.items())
            evidence = "; ".join(r.match.passed) + (f" (suggest options: {hints})" if hints else "")
            table.add_row(str(r.unit), f"[green]{fp.label}[/green]", f"{fp.kind} / {fp.model}", evidence)
        elif r.answered:
            table.add_row(str(r.unit), "[yellow]unknown model[/yellow]", "—", r.note)
        elif len(results) <= 32:
            table.add_row(str(r.unit), "[dim]no answer[/dim]", "—", r.note)
    out.print(table)
    silent = [r.unit for r in results if not r.answered]
    if silent:
        out.print(f"No answer from units: {_ranges(silent)}")
    out.print(summary)
    if save is not None:
        out.print(
            f"Saved to {save}; add a unit with: steward commission add --from-scan {save} --unit N --id ID"
        )


def _ranges(units: list[int]) -> str:
    parts: list[str] = []
    start = prev = units[0]
    for u in [*units[1:], None]:
        if u is not None and u == prev + 1:
            prev = u
            continue
        parts.append(str(start) if start == prev else f"{start}-{prev}")
        if u is not None:
            start = prev = u
    return ", ".join(parts)


# ---- scan ble --------------------------------------------------------------------------------------
@scan_app.command("ble")
def scan_ble_cmd(
    *,
    ctx: typer.Context,
    seconds: Annotated[float, typer.Option(help="How long to listen")] = 10.0,
    config: OptionalConfig = None,
    installer: Installer = None,
    as_json: JsonOpt = False,
) -> None:
    """Listen for BLE advertisements; show name, address, RSSI and the reading of BTHome sensors."""
    from steward.commission._ble import scan_ble

    if not 0.1 <= seconds <= 600:
        _fail("--seconds must be between 0.1 and 600")
    backend = _hooks(ctx).ble_backend
    err = _err()
    with (
        err.status(f"listening for BLE advertisements for {seconds:g} s…")
        if err.is_terminal
        else contextlib.nullcontext()
    ):
        heard = _run(scan_ble(seconds, backend=backend))
    seen = sorted(heard.values(), key=lambda s: -s.rssi)
    bthome = [s for s in seen if s.bthome]
    summary = f"{len(seen)} device(s) heard, {len(bthome)} BTHome sensor(s)"
    _log(config, "scan_ble", installer=installer, ok=True, summary=summary, seen=[s.as_dict() for s in seen])
    if as_json:
        _print_json({"seconds": seconds, "devices": [s.as_dict() for s in seen]})
        return
    out = _out()
    table = Table(title=f"BLE devices heard in {seconds:g} s")
    for col in ("Address", "Name", "RSSI", "Reading"):
        table.add_column(col)
    for s in seen:
        reading = s.reading if s.values else f"[dim]{s.note}[/dim]"
        table.add_row(s.address, s.name or "—", f"{s.rssi} dBm", reading)
    out.print(table)
    out.print(summary)


# ---- probe -----------------------------------------------------------------------------------------
@commission_app.command("probe")
def probe(
    *,
    ctx: typer.Context,
    device_id: Annotated[str, typer.Argument(help="Device id from the site config")],
    config: ConfigOpt,
    timeout: Annotated[
        float | None, typer.Option(help="Per-request timeout (default: as configured)")
    ] = None,
    seconds: Annotated[float, typer.Option(help="BLE devices: how long to listen")] = 10.0,
    installer: Installer = None,
    as_json: JsonOpt = False,
) -> None:
    """Read every point of one configured device once: raw registers and scaled values."""
    from steward.commission._device import probe_device

    site = _load(config)
    dev = _device(site, device_id, config)
    result = _run(
        probe_device(dev, timeout_s=timeout, ble_seconds=seconds, ble_backend=_hooks(ctx).ble_backend)
    )
    summary = f"{len(result.rows)} point(s) read" if result.ok else f"failed: {result.error}"
    _log(
        config,
        "probe",
        installer=installer,
        ok=result.ok,
        summary=summary,
        device_id=dev.id,
        result=result.as_dict(),
    )
    if as_json:
        _print_json(result.as_dict())
    else:
        out = _out()
        if result.ok:
            table = Table(
                title=f"{dev.id} ({dev.kind}, {dev.model}) on {dev.address_key[0]} {dev.address_key[1]}"
            )
            for col in ("Point", "Where", "Raw", "Value", "Unit"):
                table.add_column(col)
            for row in result.rows:
                table.add_row(row.point, row.where, row.raw, str(row.value), row.unit)
            out.print(table)
            if result.state:
                state = ", ".join(f"{k}={v}" for k, v in result.state.items() if k != "updated_at")
                out.print(f"Driver state: {state}")
            out.print(f"OK: {summary} in {result.elapsed_s:.2f} s")
        else:
            out.print(f"[red]FAIL[/red]: {dev.id}: {result.error}")
    if not result.ok:
        raise typer.Exit(1)


# ---- test ------------------------------------------------------------------------------------------
def _parse_args(pairs: list[str]) -> dict[str, Any]:
    args: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            _fail(f"--arg {pair!r}: write it as name=value")
        try:
            args[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError:
            args[key.strip()] = value
    return args


@commission_app.command("test")
def action_test(
    *,
    device_id: Annotated[str, typer.Argument(help="Device id from the site config")],
    action: Annotated[str, typer.Argument(help="open, close, stop (gates); unlock, lock (doors)…")],
    config: ConfigOpt,
    arg: Annotated[list[str] | None, typer.Option("--arg", help="Action argument, e.g. duration_s=3")] = None,
    timeout: Annotated[float, typer.Option(help="Give up after this many seconds")] = 60.0,
    installer: Installer = None,
    as_json: JsonOpt = False,
) -> None:
    """Perform one action on one device through its driver; show the state before and after."""
    from steward.commission._device import run_action

    site = _load(config)
    dev = _device(site, device_id, config)
    result = _run(run_action(dev, action, _parse_args(arg or []), timeout_s=timeout))
    _log(
        config,
        "test",
        installer=installer,
        ok=result.ok,
        summary=result.summary,
        device_id=dev.id,
        test=action,
        result=result.as_dict(),
    )
    if as_json:
        _print_json(result.as_dict())
    else:
        out = _out()
        table = Table(title=f"{dev.id}: {action}")
        table.add_column("State")
        table.add_column("Before")
        table.add_column("After")
        if result.settled is not None:
            table.add_column("Settled")
        keys = [k for k in {**result.before, **result.after} if k != "updated_at"]
        for k in keys:
            row = [k, str(result.before.get(k, "—")), str(result.after.get(k, "—"))]
            if result.settled is not None:
                row.append(str(result.settled.get(k, "—")))
            table.add_row(*row)
        out.print(table)
        if result.events:
            out.print(f"Device reported: {', '.join(result.events)}")
        out.print(("[green]OK[/green]: " if result.ok else "[red]FAIL[/red]: ") + result.summary)
    if not result.ok:
        raise typer.Exit(1)


# ---- add -------------------------------------------------------------------------------------------
def _parse_options(pairs: list[str]) -> dict[str, Any]:
    return _parse_args(pairs)


@commission_app.command("add")
def add(
    *,
    config: ConfigOpt,
    device_id: Annotated[str, typer.Option("--id", help="New device id (letters, digits, - and _)")],
    kind: Annotated[
        str | None, typer.Option(help="barrier_gate, door_access, smart_meter, fire_panel…")
    ] = None,
    model: Annotated[str | None, typer.Option(help="Model, e.g. sdm120, io-module")] = None,
    name: Annotated[str | None, typer.Option(help="Human name")] = None,
    transport: Annotated[
        str | None, typer.Option(help="modbus_tcp, modbus_rtu, mqtt or ble (inferred from the options below)")
    ] = None,
    host: Annotated[str | None, typer.Option(help="Modbus TCP host")] = None,
    port: Annotated[int | None, typer.Option(help="Modbus TCP port")] = None,
    serial: Annotated[str | None, typer.Option(help="Serial port (Modbus RTU)")] = None,
    baud: Annotated[int | None, typer.Option(help="Serial baud rate")] = None,
    unit: Annotated[int | None, typer.Option(help="Modbus unit id")] = None,
    topic_base: Annotated[str | None, typer.Option(help="MQTT topic base")] = None,
    address: Annotated[str | None, typer.Option(help="BLE address AA:BB:CC:DD:EE:FF")] = None,
    poll_interval: Annotated[float | None, typer.Option(help="Poll interval in seconds")] = None,
    option: Annotated[list[str] | None, typer.Option("--option", help="Driver option, e.g. zones=8")] = None,
    from_scan: Annotated[
        Path | None, typer.Option(help="A `scan modbus --save` file; use with --unit")
    ] = None,
    installer: Installer = None,
) -> None:
    """Append a device to the site config, validated by the gateway's own loader; comments are kept."""
    from steward.commission._site_edit import add_device

    device: dict[str, Any] = {"id": device_id}
    options = _parse_options(option or [])
    t: dict[str, Any] = {}
    if from_scan is not None:
        if unit is None:
            _fail("--from-scan needs --unit: which unit of the scan to add")
        try:
            scan = json.loads(from_scan.read_text(encoding="utf-8"))
            t = dict(scan["transport"])
            found = next((u for u in scan["units"] if u["unit"] == unit), None)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            _fail(f"--from-scan {from_scan}: not a scan result ({exc})")
        if found is None:
            _fail(f"--from-scan {from_scan}: unit {unit} did not answer in that scan")
        if not found.get("recognised") and not (kind and model):
            _fail(f"unit {unit} answered but its model was not recognised; give --kind and --model")
        kind = kind or found["kind"]
        model = model or found["model"]
        options = {**found.get("options", {}), **options}
        t["unit"] = unit
    else:
        kind_of = transport or (
            "modbus_tcp"
            if host
            else "modbus_rtu"
            if serial
            else "mqtt"
            if topic_base
            else "ble"
            if address
            else None
        )
        if kind_of is None:
            _fail("say where the device is: --host/--unit, --serial/--unit, --topic-base or --address")
        t = {"type": kind_of}
        extra = {
            "host": host,
            "port": port,
            "baudrate": baud,
            "unit": unit,
            "topic_base": topic_base,
            "address": address,
        }
        if kind_of == "modbus_rtu":
            extra["port"] = serial
        t.update({k: v for k, v in extra.items() if v is not None})
    if kind is None:
        _fail("--kind is required (or --from-scan with a recognised unit)")
    device["kind"] = kind
    if model:
        device["model"] = model
    if name:
        device["name"] = name
    device["transport"] = t
    if poll_interval is not None:
        device["poll_interval_s"] = poll_interval
    if options:
        device["options"] = options
    try:
        site = add_device(config, device)
    except ConfigError as exc:
        _fail(f"not added:\n{exc}", 2)
    dev = site.device(device_id)
    _log(
        config,
        "add",
        installer=installer,
        ok=True,
        summary=f"added {device_id}",
        device_id=device_id,
        device=device,
    )
    _out().print(
        f"Added [bold]{dev.id}[/bold] ({dev.kind}, {dev.model}) on {dev.address_key[0]} {dev.address_key[1]} "
        f"to {config}; {len(site.devices)} device(s) now."
    )


# ---- config check ----------------------------------------------------------------------------------
@config_app.command("check")
def config_check(
    *,
    ctx: typer.Context,
    config: ConfigOpt,
    live: Annotated[bool, typer.Option("--live", help="Also check every device answers on site")] = False,
    timeout: Annotated[
        float | None, typer.Option(help="Per-request timeout for --live (default: as configured)")
    ] = None,
    ble_seconds: Annotated[float, typer.Option(help="--live: how long to listen for BLE devices")] = 5.0,
    installer: Installer = None,
    as_json: JsonOpt = False,
) -> None:
    """Validate the config as the gateway would; with --live, check each device. Exit 1 if anything fails."""
    from steward.commission._device import CheckRow, live_check

    try:
        site = load_site_config(config)
    except ConfigError as exc:
        if as_json:
            _print_json({"config": str(config), "ok": False, "error": str(exc), "checks": []})
        else:
            _out().print(f"[red]FAIL[/red]: {exc}", soft_wrap=True)
        raise typer.Exit(1) from None
    rows = [
        CheckRow(d.id, "config", "pass", f"{d.kind} {d.model} on {d.address_key[0]} {d.address_key[1]}")
        for d in site.devices
    ]
    if live:
        rows += _run(
            live_check(site, timeout_s=timeout, ble_seconds=ble_seconds, ble_backend=_hooks(ctx).ble_backend)
        )
        order = {d.id: i for i, d in enumerate(site.devices)}
        rows.sort(key=lambda r: order.get(r.device_id, 0))
    failed = [r for r in rows if r.result == "fail"]
    ok = not failed
    if live:
        for dev in site.devices:
            mine = [r for r in rows if r.device_id == dev.id and r.check != "config"]
            bad = [r for r in mine if r.result == "fail"]
            _log(
                config,
                "check",
                installer=installer,
                ok=not bad,
                device_id=dev.id,
                summary="; ".join(f"{r.check} {r.result}" for r in mine),
                checks=[r.as_dict() for r in mine],
            )
    if as_json:
        _print_json({"config": str(config), "ok": ok, "live": live, "checks": [r.as_dict() for r in rows]})
    else:
        out = _out()
        table = Table(
            title=f"{config}: site {site.site_id}, gateway {site.gateway_id}" + (" (live)" if live else "")
        )
        for col in ("Device", "Check", "Result", "Detail"):
            table.add_column(col)
        for r in rows:
            mark = {"pass": True, "fail": False}.get(r.result)
            table.add_row(r.device_id, r.check, _mark(mark), r.detail)
        out.print(table)
        devices_failed = sorted({r.device_id for r in failed})
        if ok:
            out.print(f"[green]OK[/green]: {len(rows)} check(s) passed or skipped")
        else:
            out.print(f"[red]FAILED[/red]: {len(failed)} check(s) on {', '.join(devices_failed)}")
    if not ok:
        raise typer.Exit(1)


# ---- register --------------------------------------------------------------------------------------
F = TypeVar("F", bound=Callable[..., None])


def _no_traceback(command: F) -> F:
    """For commands that run no event loop (so ``_run`` does not guard them): an installer never sees
    a traceback; STEWARD_DEBUG=1 shows it."""

    @functools.wraps(command)
    def guarded(*args: Any, **kwargs: Any) -> None:
        try:
            command(*args, **kwargs)
        except (typer.Exit, typer.Abort, KeyboardInterrupt):
            raise
        except Exception as exc:
            if os.environ.get("STEWARD_DEBUG"):
                raise
            _fail(
                f"unexpected error ({type(exc).__name__}): {exc}; rerun with STEWARD_DEBUG=1 for details", 3
            )

    return guarded  # type: ignore[return-value]


def _cloud_client(cloud: str | None, token: str | None, timeout: float) -> Any:
    from steward.commission._cloud import CloudClient

    if not cloud:
        _fail(
            "--cloud (or STEWARD_CLOUD_URL) is required: the cloud's address, e.g. https://cloud.example.com"
        )
    if not token:
        _fail("--token (or STEWARD_TOKEN) is required: an API token of an installer of this site")
    if not 1 <= timeout <= 300:
        _fail("--cloud-timeout must be between 1 and 300 seconds")
    try:
        return CloudClient(cloud, token, timeout_s=timeout)
    except ValueError as exc:
        _fail(f"--cloud/--token: {exc}")


@commission_app.command("register")
@_no_traceback
def register(
    *,
    config: ConfigOpt,
    cloud: CloudOpt = None,
    token: TokenOpt = None,
    force: Annotated[
        bool,
        typer.Option("--force", help="Register again even though credentials exist (issues a new password)"),
    ] = False,
    broker_url: Annotated[
        str | None, typer.Option(help="Also set uplink.broker_url, e.g. mqtts://broker.example.com:8883")
    ] = None,
    cloud_timeout: CloudTimeout = 20.0,
    installer: Installer = None,
    as_json: JsonOpt = False,
) -> None:
    """Register the gateway with the cloud; write its broker credentials and the cloud's command key
    into the config (and a credentials file), both readable by you only."""
    from steward.commission._cloud import (
        CloudFailure,
        GatewayCredentials,
        credentials_path,
        write_private,
    )
    from steward.commission._log import now_iso
    from steward.commission._site_edit import set_section
    from steward.config import UplinkConfig

    site = _load(config)
    creds_path = credentials_path(config)
    held = [str(creds_path)] if creds_path.exists() else []
    if site.uplink.password is not None:
        held.append(f"{config} (uplink.password of {site.uplink.username or 'no user'})")
    if held and not force:
        _fail(
            f"gateway {site.gateway_id} already has broker credentials in {' and '.join(held)}. "
            "Registering again gives it a new password and the old one stops working, so a gateway "
            "running with it goes offline until it gets this config. Pass --force to do that."
        )
    if broker_url is not None:
        try:
            UplinkConfig(broker_url=broker_url)
        except ValueError as exc:
            _fail(f"--broker-url: {exc}")
    for path in (config, config.parent):
        if not os.access(path, os.W_OK):
            # Checked first: the cloud shows the password once, and it must have somewhere to go.
            _fail(f"cannot write {path}; registration needs to save the gateway's credentials there")
    client = _cloud_client(cloud, token, cloud_timeout)
    with client:
        try:
            known = None if force else client.gateway(site.site_id, site.gateway_id)
            if known and known.get("last_seen"):
                _fail(
                    f"gateway {site.gateway_id} is known to the cloud and has connected to it "
                    f"(last seen {known['last_seen']}, {'online' if known.get('online') else 'offline'}). "
                    "Registering again gives it a new password and the gateway using the old one goes "
                    "offline. Pass --force to do that."
                )
            reply = client.register(
                site.site_id, site.gateway_id, site.site_name, [d.id for d in site.devices]
            )
        except CloudFailure as exc:
            _log(config, "register", installer=installer, ok=False, summary=str(exc), cloud=client.base_url)
            _fail(str(exc), exc.exit_code)
    creds = GatewayCredentials(
        **reply.model_dump(), cloud=client.base_url, registered_at=now_iso(), registered_by=installer
    )
    try:
        write_private(creds_path, creds.model_dump_json(indent=2) + "\n")
    except OSError as exc:
        _fail(
            f"registered, but {creds_path} could not be written ({exc.strerror}); fix that and run "
            "`register --force` (the cloud issues a new password)",
            1,
        )
    values: dict[str, Any] = {
        "username": reply.broker_username,
        "password": reply.broker_password,
        "command_public_key": reply.command_public_key,
        "topic_prefix": reply.topic_prefix,
    }
    if broker_url is not None:
        values = {"broker_url": broker_url, **values}
    try:
        set_section(config, "uplink", values, private=True)
    except (ConfigError, OSError) as exc:
        _fail(f"registered and saved in {creds_path}, but {config} was not updated: {exc}", 1)
    how = "registered again: the earlier password no longer works" if reply.rotated else "registered"
    summary = f"{how} as {reply.broker_username} at {client.base_url}"
    _log(
        config,
        "register",
        installer=installer,
        ok=True,
        summary=summary,
        cloud=client.base_url,
        broker_username=reply.broker_username,
        rotated=reply.rotated,
    )
    if as_json:
        _print_json(
            {
                "site_id": reply.site_id,
                "gateway_id": reply.gateway_id,
                "broker_username": reply.broker_username,
                "command_public_key": reply.command_public_key,
                "topic_prefix": reply.topic_prefix,
                "rotated": reply.rotated,
                "device_ids_taken": reply.device_ids_taken,
                "cloud": client.base_url,
                "config": str(config),
                "credentials_file": str(creds_path),
            }
        )
        return
    out = _out()
    out.print(f"[green]OK[/green]: gateway {reply.gateway_id} at site {reply.site_id} {summary}.")
    if reply.rotated:
        out.print("[yellow]It was registered before; its earlier broker password no longer works.[/yellow]")
    if reply.device_ids_taken:
        out.print(
            f"[red]Device ids another site already has: {', '.join(reply.device_ids_taken)}.[/red] "
            "Device ids are unique across sites; the cloud keeps those devices with their site, and "
            "this site's events for them update neither state nor readings. Rename them in the config "
            "(e.g. after the estate) before the gateway runs."
        )
    out.print(
        f"{config}: uplink username, password, command_public_key and topic_prefix set; "
        "readable by you only (mode 0600)."
    )
    out.print(f"Credentials also saved in {creds_path} (mode 0600). Copy both to the gateway securely.")


# ---- report ----------------------------------------------------------------------------------------
@commission_app.command("report")
@_no_traceback
def report(
    *,
    config: ConfigOpt,
    installer: Annotated[
        str, typer.Option("--installer", envvar="STEWARD_INSTALLER", help="Who signs the report")
    ],
    out_prefix: Annotated[
        Path | None, typer.Option("--out", help="Write <out>.json and <out>.md (default: next to the config)")
    ] = None,
    upload: Annotated[
        bool | None,
        typer.Option(
            "--upload/--no-upload",
            help="Also send the report to the cloud (default: when --cloud or --token is given)",
        ),
    ] = None,
    cloud: CloudOpt = None,
    token: TokenOpt = None,
    cloud_timeout: CloudTimeout = 20.0,
) -> None:
    """Write the commissioning report (JSON + Markdown) from the config and its commissioning log;
    with --upload (or --cloud/--token) also upload it to the cloud."""
    from steward.commission._log import CommissioningLog, build_report, render_markdown

    site = _load(config)
    log = CommissioningLog.for_config(config)
    try:
        entries = log.entries()
    except ValueError as exc:
        _fail(str(exc), 2)
    data = build_report(site, config, entries, installer)
    prefix = out_prefix or config.with_name(config.stem + ".commissioning-report")
    json_path, md_path = Path(f"{prefix}.json"), Path(f"{prefix}.md")
    try:
        json_path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        md_path.write_text(render_markdown(data), encoding="utf-8")
    except OSError as exc:
        _fail(f"cannot write the report: {exc}", 2)
    out = _out()
    table = Table(title=f"Commissioning of {site.site_name} ({site.site_id}) by {installer}")
    for col in ("Device", "Found", "Probed", "Action tested", "Complete"):
        table.add_column(col)
    for d in data["devices"]:
        tested = [t for t in d["tests"] if t.get("ok")]
        table.add_row(
            d["id"],
            "yes" if d["found"] else "—",
            _mark(d["probed"]["ok"]) if d["probed"] else "—",
            ", ".join(t["test"] for t in tested)
            or ("n/a" if "action test" not in d["missing"] and not d["tests"] else "—"),
            "[green]yes[/green]" if d["complete"] else "[yellow]no[/yellow]: " + ", ".join(d["missing"]),
        )
    out.print(table)
    done = sum(d["complete"] for d in data["devices"])
    out.print(
        f"{done}/{len(data['devices'])} device(s) complete ({len(entries)} log entries from {log.path})"
    )
    out.print(f"Report written: {json_path} and {md_path}")
    if upload is None:
        upload = cloud is not None or token is not None
    if upload:
        _upload_report(
            config=config,
            site=site,
            data=data,
            installer=installer,
            cloud=cloud,
            token=token,
            timeout=cloud_timeout,
        )


def _upload_report(
    *,
    config: Path,
    site: SiteConfig,
    data: dict[str, Any],
    installer: str,
    cloud: str | None,
    token: str | None,
    timeout: float,
) -> None:
    from steward.commission._cloud import CloudFailure, GatewayCredentials, credentials_path

    if not cloud and credentials_path(config).exists():
        try:
            cloud = GatewayCredentials.load(credentials_path(config)).cloud  # where `register` went
        except CloudFailure as exc:
            _fail(f"report saved locally, not uploaded: {exc}", exc.exit_code)
    client = _cloud_client(cloud, token, timeout)
    with client:
        try:
            stored = client.upload_report(site.gateway_id, data)
        except CloudFailure as exc:
            where = client.base_url
            _log(config, "upload_report", installer=installer, ok=False, summary=str(exc), cloud=where)
            _fail(f"report saved locally, not uploaded: {exc}", exc.exit_code)
    summary = f"uploaded to {client.base_url} as report {stored.get('id')}"
    _log(config, "upload_report", installer=installer, ok=True, summary=summary, cloud=client.base_url)
    out = _out()
    out.print(f"[green]Uploaded[/green]: {summary} (GET /api/v1/gateways/{site.gateway_id}/commissioning)")
    taken = [str(d) for d in stored.get("device_ids_taken") or []]
    if taken:
        # A device added after `register` was checked by nobody until now: say it at handover.
        out.print(
            f"[red]Device ids another site already has: {', '.join(taken)}.[/red] Their events would "
            "update no device in the cloud: rename them in the config (device ids are unique across "
            "estates), then run the gateway and this report again."
        )
