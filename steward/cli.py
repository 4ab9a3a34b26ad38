"""`steward`: one command line for the demo, the gateway, the cloud, simulators and config checks."""

from __future__ import annotations

import asyncio
import contextlib
import sys
from pathlib import Path
from typing import Annotated, Any

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
keys_app = typer.Typer(no_args_is_help=True, help="Command signing keys.")
app.add_typer(edge_app, name="edge")
app.add_typer(cloud_app, name="cloud")
app.add_typer(sim_app, name="sim")
app.add_typer(config_app, name="config")
app.add_typer(broker_app, name="broker")
app.add_typer(keys_app, name="keys")
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
    settings = CloudSettings.from_env(None, **overrides)
    _run(serve(settings))


DatabaseUrl = Annotated[
    str | None,
    typer.Option(help="sqlite+aiosqlite:///… or postgresql+asyncpg://… (else STEWARD_CLOUD_DATABASE_URL)"),
]


def _cloud_settings(**overrides: Any):  # type: ignore[no-untyped-def]
    from cloud.settings import CloudSettings, SettingsError

    try:
        return CloudSettings.from_env(None, **{k: v for k, v in overrides.items() if v is not None})
    except SettingsError as exc:
        typer.secho(str(exc), fg=typer.colors.RED, err=True)
        raise typer.Exit(2) from None


@cloud_app.command("create-admin")
def cloud_create_admin(
    username: Annotated[str, typer.Option(help="Login name")] = "admin",
    password: Annotated[
        str | None, typer.Option(help="At least 12 characters; default: generate one and print it")
    ] = None,
    reset: Annotated[bool, typer.Option("--reset", help="Reset an existing account to admin")] = False,
    database_url: DatabaseUrl = None,
) -> None:
    """Create an admin account in the cloud database (migrating it first), so you can log in."""
    from cloud.auth import create_user
    from cloud.auth.errors import Conflict
    from cloud.auth.passwords import MIN_PASSWORD_LENGTH

    if password is not None and len(password) < MIN_PASSWORD_LENGTH:
        typer.secho(f"--password must be at least {MIN_PASSWORD_LENGTH} characters", fg="red", err=True)
        raise typer.Exit(2)
    settings = _cloud_settings(database_url=database_url)
    try:
        chosen = asyncio.run(create_user(settings, username, password, replace=reset))
    except Conflict:
        typer.secho(f"user {username!r} exists; pass --reset to reset it", fg=typer.colors.RED, err=True)
        raise typer.Exit(1) from None
    typer.echo(f"admin {username.strip().lower()!r} {'reset' if reset else 'created'}")
    if password is None:
        typer.echo(f"password: {chosen}")
        typer.echo("(shown once; log in with POST /api/v1/auth/login)")


@cloud_app.command("broker-config")
def cloud_broker_config(
    *,
    out: Annotated[Path, typer.Option(help="Directory for passwd, acl and mosquitto.conf")],
    port: Annotated[int, typer.Option(help="Mosquitto listener port")] = 8883,
    bind: Annotated[str | None, typer.Option(help="Listener bind address")] = None,
    cloud_port: Annotated[
        int, typer.Option(help="The cloud's own listener (no TLS; only the cloud account may use it)")
    ] = 1883,
    cloud_bind: Annotated[
        str,
        typer.Option(help="Its bind address: loopback, unless the cloud runs on another host"),
    ] = "127.0.0.1",
    ca_file: Annotated[Path | None, typer.Option(help="TLS: CA certificate")] = None,
    cert_file: Annotated[Path | None, typer.Option(help="TLS: broker certificate")] = None,
    key_file: Annotated[Path | None, typer.Option(help="TLS: broker key")] = None,
    require_certificate: Annotated[bool, typer.Option(help="TLS: clients must show a certificate")] = False,
    rotate_cloud: Annotated[
        bool, typer.Option("--rotate-cloud", help="New password for the cloud's broker account (printed)")
    ] = False,
    database_url: DatabaseUrl = None,
) -> None:
    """Write Mosquitto files for every registered gateway plus the cloud's account (from the broker
    accounts file gateway registration keeps); then `kill -HUP` Mosquitto."""
    from cloud.auth.registration import accounts_path, cloud_username, registered_gateways, update_accounts
    from cloud.auth.registration import sync_cloud_account as sync
    from steward.broker_auth import BrokerAccounts, provision
    from steward.mosquitto import ServerTls, write_broker_config

    tls_files = (ca_file, cert_file, key_file)
    if any(tls_files) and not all(tls_files):
        typer.secho("TLS needs --ca-file, --cert-file and --key-file together", fg="red", err=True)
        raise typer.Exit(2)
    if cloud_port == port:
        typer.secho(f"--cloud-port {port} is the gateways' listener too; pick another", fg="red", err=True)
        raise typer.Exit(2)
    settings = _cloud_settings(database_url=database_url)
    cloud = cloud_username(settings)

    def change(existing: BrokerAccounts | None) -> tuple[BrokerAccounts, str | None]:
        prov = provision(
            registered_gateways(existing),
            cloud_username=cloud,
            topic_prefix=settings.topic_prefix,
            existing=sync(existing, settings),
            rotate=[cloud] if rotate_cloud else [],
        )
        return prov.accounts, prov.passwords.get(cloud)

    new_cloud_password = update_accounts(settings, change)
    accounts = BrokerAccounts.load(accounts_path(settings))
    tls = (
        ServerTls(ca_file, cert_file, key_file, require_certificate=require_certificate)  # type: ignore[arg-type]
        if ca_file
        else None
    )
    files = write_broker_config(
        accounts,
        out,
        port=port,
        bind_address=bind,
        tls=tls,
        cloud_port=cloud_port,
        cloud_bind_address=cloud_bind,
    )
    gateways = registered_gateways(accounts)
    typer.echo(f"{files.conf}, {files.password_file}, {files.acl_file}: cloud + {len(gateways)} gateway(s)")
    for site_id, gateway_id in gateways:
        typer.echo(f"  {gateway_id}@{site_id}")
    if new_cloud_password is not None:
        typer.echo(f"cloud broker account {cloud!r} password: {new_cloud_password}")
        typer.echo("(shown once: set STEWARD_CLOUD_BROKER_USERNAME / STEWARD_CLOUD_BROKER_PASSWORD)")
    elif settings.broker_password is None:
        typer.echo(f"cloud broker account {cloud!r}: password unchanged (--rotate-cloud to set a new one)")
    typer.echo("Reload Mosquitto (kill -HUP) to apply.")


@keys_app.command("generate")
def keys_generate(
    out: Annotated[Path, typer.Option(help="Where to write the Ed25519 private key (PEM, 0600)")],
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing key file")] = False,
) -> None:
    """Generate the cloud's command signing key; prints the public key for gateways' site files."""
    from protocol.signing import generate_private_key, public_key_b64, save_private_key

    if out.exists() and not force:
        typer.secho(f"{out} exists; --force overwrites it (gateways need the new key)", fg="red", err=True)
        raise typer.Exit(1)
    out.parent.mkdir(parents=True, exist_ok=True)
    key = generate_private_key()
    save_private_key(key, out)
    typer.echo(f"private key: {out} (point STEWARD_CLOUD_COMMAND_SIGNING_KEY_FILE at it)")
    typer.echo(f"public key (uplink.command_public_key): {public_key_b64(key)}")


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
