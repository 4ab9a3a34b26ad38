"""The commissioning log and report.

Every scan, probe, action test and live check run with ``--config`` is appended to a JSON log next
to the config (``site.yaml`` -> ``site.yaml.commissioning.json``): what was done, to which device,
by whom, when, and what came of it. ``steward commission report`` turns the log and the config into
a commissioning report (JSON for machines, Markdown for people): per device, whether a scan found
it, whether it was probed and its action tested, by whom and when.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from protocol.actions import ACTIONS, GATEWAY_ACTIONS
from steward.config import BleTransport, ModbusRtuTransport, ModbusTcpTransport, SiteConfig

__all__ = ["CommissioningLog", "build_report", "log_path", "render_markdown"]

LOG_VERSION = 1


def log_path(config: Path) -> Path:
    return config.with_name(config.name + ".commissioning.json")


def now_iso() -> str:
    return datetime.now(UTC).replace(microsecond=0).isoformat()


@dataclass(slots=True)
class CommissioningLog:
    path: Path

    @classmethod
    def for_config(cls, config: Path) -> CommissioningLog:
        return cls(log_path(config))

    def entries(self) -> list[dict[str, Any]]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return []
        except (OSError, ValueError) as exc:
            raise ValueError(f"{self.path}: the commissioning log cannot be read ({exc})") from None
        entries = data.get("entries") if isinstance(data, dict) else None
        if not isinstance(entries, list):
            raise ValueError(f"{self.path}: not a commissioning log (no 'entries' list)")
        return entries

    def append(self, action: str, *, installer: str | None, ok: bool, summary: str, **details: Any) -> None:
        entries = self.entries()
        entries.append(
            {
                "at": now_iso(),
                "installer": installer,
                "action": action,
                "ok": ok,
                "summary": summary,
                **details,
            }
        )
        text = json.dumps(
            {"version": LOG_VERSION, "entries": entries}, indent=2, ensure_ascii=False, default=str
        )
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", dir=self.path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(text + "\n")
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


def _latest(entries: list[dict[str, Any]], action: str, device_id: str) -> dict[str, Any] | None:
    found = [e for e in entries if e.get("action") == action and e.get("device_id") == device_id]
    return found[-1] if found else None


def _scan_sighting(entries: list[dict[str, Any]], bus: str, unit: int) -> dict[str, Any] | None:
    for e in reversed(entries):
        if e.get("action") != "scan_modbus" or e.get("bus") != bus:
            continue
        for u in e.get("units", []):
            if u.get("unit") == unit and u.get("answered"):
                return {
                    "at": e["at"],
                    "installer": e.get("installer"),
                    "model": u.get("model"),
                    "label": u.get("label"),
                }
    return None


def _ble_sighting(entries: list[dict[str, Any]], address: str) -> dict[str, Any] | None:
    for e in reversed(entries):
        if e.get("action") != "scan_ble":
            continue
        for s in e.get("seen", []):
            if str(s.get("address", "")).upper() == address.upper():
                return {
                    "at": e["at"],
                    "installer": e.get("installer"),
                    "model": "bthome" if s.get("bthome") else None,
                }
    return None


def _brief(entry: dict[str, Any] | None) -> dict[str, Any] | None:
    if entry is None:
        return None
    return {k: entry.get(k) for k in ("at", "installer", "ok", "summary")}


def build_report(
    site: SiteConfig, config: Path, entries: list[dict[str, Any]], installer: str
) -> dict[str, Any]:
    devices = []
    for dev in site.devices:
        t = dev.transport
        if isinstance(t, ModbusTcpTransport | ModbusRtuTransport):
            found = _scan_sighting(entries, t.bus, t.unit)
        elif isinstance(t, BleTransport):
            found = _ble_sighting(entries, t.address)
        else:
            found = None
        probed = _brief(_latest(entries, "probe", dev.id))
        tests = [
            {**(_brief(e) or {}), "test": e.get("test")}
            for e in entries
            if e.get("action") == "test" and e.get("device_id") == dev.id
        ]
        checked = _latest(entries, "check", dev.id)
        has_actions = bool(set(ACTIONS.get(dev.kind, {})) - GATEWAY_ACTIONS)
        tested_ok = any(t_.get("ok") for t_ in tests)
        missing = []
        if not (probed and probed["ok"]):
            missing.append("probe")
        if has_actions and not tested_ok:
            missing.append("action test")
        devices.append(
            {
                "id": dev.id,
                "name": dev.name,
                "kind": dev.kind,
                "model": dev.model,
                "address": f"{dev.address_key[0]} {dev.address_key[1]}",
                "found": found,
                "probed": probed,
                "tests": tests,
                "live_check": _brief(checked),
                "complete": not missing,
                "missing": missing,
            }
        )
    return {
        "site_id": site.site_id,
        "site_name": site.site_name,
        "gateway_id": site.gateway_id,
        "config": str(config),
        "installer": installer,
        "generated_at": now_iso(),
        "devices": devices,
        "complete": all(d["complete"] for d in devices),
        "log_entries": len(entries),
        "registered": _registration(entries),
    }


def _registration(entries: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The last successful ``commission register`` (never its password: the log holds none)."""
    done = [e for e in entries if e.get("action") == "register" and e.get("ok")]
    if not done:
        return None
    e = done[-1]
    return {
        "at": e.get("at"),
        "installer": e.get("installer"),
        "cloud": e.get("cloud"),
        "broker_username": e.get("broker_username"),
        "rotated": bool(e.get("rotated")),
    }


def _cell(entry: dict[str, Any] | None) -> str:
    if not entry:
        return "—"
    mark = "✅" if entry.get("ok") else "❌"
    who = entry.get("installer") or "?"
    return f"{mark} {entry.get('at', '')} by {who}".replace("|", "/")


def _registered_cell(reg: dict[str, Any] | None) -> str:
    if not reg:
        return "not registered (`steward commission register`)"
    who = reg.get("installer") or "?"
    return f"✅ `{reg.get('broker_username')}` at {reg.get('cloud')}, {reg.get('at')} by {who}"


def render_markdown(report: dict[str, Any]) -> str:
    lines = [
        f"# Commissioning report — {report['site_name']} ({report['site_id']})",
        "",
        f"- Gateway: `{report['gateway_id']}`",
        f"- Config: `{report['config']}`",
        f"- Installer: {report['installer']}",
        f"- Generated: {report['generated_at']}",
        f"- Status: {'**complete**' if report['complete'] else '**incomplete**'}",
        f"- Cloud registration: {_registered_cell(report.get('registered'))}",
        "",
        "| Device | Kind / model | Address | Found by scan | Probed | Action tests | Complete |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for d in report["devices"]:
        found = d["found"]
        found_cell = (
            "—" if not found else f"{found.get('label') or found.get('model') or 'yes'} ({found['at']})"
        )
        tests = (
            "<br>".join(
                f"{'✅' if t.get('ok') else '❌'} {t.get('test')}: {t.get('summary', '')}".replace("|", "/")
                for t in d["tests"]
            )
            or "—"
        )
        done = "yes" if d["complete"] else "no: " + ", ".join(d["missing"])
        cells = [
            d["id"],
            f"{d['kind']} / {d['model']}",
            d["address"],
            found_cell,
            _cell(d["probed"]),
            tests,
            done,
        ]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    return "\n".join(lines)
