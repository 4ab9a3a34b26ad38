"""`steward`: one command line for the demo, the gateway, the cloud, simulators and config checks."""

from __future__ import annotations

import asyncio
import contextlib
import sys
from pathlib import Path
from typing import Annotated

import typer

from steward.commission import commission_app
from steward.config import ConfigError, load_site_config
from steward.logging import configure_logging

app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
    help="Steward: estate IoT gateway and cloud.",
)
edge_app = typer.Typer(no_args_is_help=True, help="The on-site gateway.")
cloud_app = typer.Typer(no_args_is_help=True, help="The cloud service for the operations centre.")
sim_app = typer.Typer(no_args_is_help=True, help="Device simulators, for trying Steward without hardware.")
config_app = typer.Typer(no_args_is_help=True, help="Site configuration files.")
broker_app = typer.Typer(no_args_is_help=True, help="The embedded MQTT broker.")
app.add_typer(edge_app, name="edge")
app.add_typer(cloud_app, name="cloud")
app.add_typer(sim_app, name="sim")
app.add_typer(config_app, name="config")
app.add_typer(broker_app, name="broker")
app.add_typer(commission_app, name="commission", help="Installer commissioning: scan, probe, test, add.")

ConfigPath = Annotated[Path, typer.Option("--config", "-c", help="Site configuration YAML")]
LogLevel = Annotated[str, typer.Option("--log-level", help="DEBUG, INFO, WARNING, ERROR")]


def _load(path: Path):  # type: ignore[no-untyped-def]
    try:
        return load_site_config(path)
    except ConfigError as exc:
        typer.secho(str(exc), fg=typer.colors.RED, err=True)
        raise typer.Exit(2) from None


def _run(coro) -> None:  # type: ignore[no-untyped-def]
    """Run until done or Ctrl-C; Ctrl-C cancels the tree so everything shuts down in order."""
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(coro)


@config_app.command("check")
def config_check(path: Annotated[Path, typer.Argument(help="Site configuration YAML")]) -> None:
    """Validate a site configuration file and list its devices."""
    site = _load(path)
    typer.echo(f"{path}: OK — site {site.site_id} ({site.site_name}), gateway {site.gateway_id}")
    for d in site.devices:
        typer.echo(f"  {d.id:<20} {d.kind:<15} {d.model:<12} {d.transport.type:<11} {d.address_key[1]}")


@edge_app.command("run")
def edge_run(config: ConfigPath = Path("config/demo-site.yaml"), log_level: LogLevel = "INFO") -> None:
    """Run the gateway for one site."""
    configure_logging(log_level)
    site = _load(config)
    from edge.gateway import Gateway

    _run(Gateway(site).run())


@cloud_app.command("run")
def cloud_run(
    database_url: Annotated[
        str | None, typer.Option(help="sqlite+aiosqlite:///… or postgresql+asyncpg://…")
    ] = None,
    broker: Annotated[str | None, typer.Option(help="host:port of the MQTT broker")] = None,
    port: Annotated[int | None, typer.Option(help="HTTP port")] = None,
    log_level: LogLevel = "INFO",
) -> None:
    """Run the cloud service (settings from STEWARD_CLOUD_* environment variables and these options)."""
    configure_logging(log_level)
    from cloud.main import serve
    from cloud.settings import CloudSettings

    overrides: dict[str, object] = {}
    if database_url:
        overrides["database_url"] = database_url
    if broker:
        host, _, p = broker.rpartition(":")
        overrides.update(broker_host=host or "127.0.0.1", broker_port=int(p))
    if port is not None:
        overrides["http_port"] = port
    settings = CloudSettings.from_env(overrides=overrides)
    _run(serve(settings))


@broker_app.command("run")
def broker_run(port: Annotated[int, typer.Option(help="TCP port")] = 18830) -> None:
    """Run the embedded MQTT broker on 127.0.0.1."""
    configure_logging("INFO")
    from steward.broker import EmbeddedBroker

    async def main() -> None:
        async with EmbeddedBroker(port=port) as b:
            typer.echo(f"MQTT broker listening on {b.url} (Ctrl-C to stop)")
            await asyncio.Event().wait()

    _run(main())


@sim_app.command("run")
def sim_run(
    config: ConfigPath = Path("config/demo-site.yaml"),
    device: Annotated[list[str] | None, typer.Option("--device", "-d", help="Only these device ids")] = None,
    travel_time_s: Annotated[float | None, typer.Option(help="Gate travel time override")] = None,
    log_level: LogLevel = "INFO",
) -> None:
    """Start simulators for the devices of a site config, on the addresses it names."""
    configure_logging(log_level)
    site = _load(config)
    from simulators.registry import run_site_simulators

    async def main() -> None:
        async with run_site_simulators(
            site, travel_time_s=travel_time_s, only=set(device or []) or None
        ) as sims:
            for dev_id in sims:
                d = site.device(dev_id)
                typer.echo(f"simulating {dev_id} ({d.kind}, {d.model}) on {d.transport.type} {d.address_key}")
            typer.echo("Ctrl-C to stop")
            await asyncio.Event().wait()

    _run(main())


@app.command("demo")
def demo(
    config: ConfigPath = Path("config/demo-site.yaml"),
    scenario: Annotated[
        bool, typer.Option("--scenario", help="Play a scripted hour, print a summary, exit")
    ] = False,
    http_port: Annotated[int, typer.Option(help="Cloud HTTP port")] = 8080,
    log_level: LogLevel = "WARNING",
) -> None:
    """Run the whole system on embedded defaults: broker, cloud, one gateway and every simulator."""
    configure_logging(log_level)
    site = _load(config)
    from steward.demo import run_demo

    code = 0

    async def main() -> None:
        nonlocal code
        code = await run_demo(site, http_port=http_port, scenario=scenario)

    _run(main())
    sys.exit(code)


if __name__ == "__main__":
    app()
