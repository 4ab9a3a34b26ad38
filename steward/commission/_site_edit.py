"""Edit a site config without disturbing what the installer (or anyone) wrote: append a device
(:func:`add_device`), set keys of a section such as ``uplink`` (:func:`set_section`).

The file is parsed with ruamel.yaml's round-trip loader; the new entry is rendered in the file's
style (flow-style transport and location, as in ``config/demo-site.yaml``) and inserted as text
after the last device, so every other byte of the file (comments, wrapped lines, quoting) stays as
it was. A file without a ``devices`` list falls back to a whole ruamel round trip, which also keeps
comments. Either way the result is validated with the same loader the gateway uses before the
file is replaced (atomically), so a duplicate id or a shared address is refused with its message.
"""

from __future__ import annotations

import io
import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any

import yaml
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import YAMLError

from steward.config import ConfigError, SiteConfig, parse_site_config

__all__ = ["add_device", "render_device", "set_section"]

_FLOW_KEYS = ("transport", "location")


def _yaml() -> YAML:
    y = YAML()
    y.preserve_quotes = True
    y.width = 4096
    y.indent(mapping=2, sequence=4, offset=2)
    return y


def _commented(device: dict[str, Any]) -> CommentedMap:
    out = CommentedMap()
    for key, value in device.items():
        if isinstance(value, dict):
            inner = CommentedMap(value)
            if key in _FLOW_KEYS:
                inner.fa.set_flow_style()
            out[key] = inner
        else:
            out[key] = value
    return out


def render_device(device: dict[str, Any], indent: int) -> str:
    """The device as one YAML sequence item whose dash is at column ``indent``."""
    y = YAML()
    y.width = 4096
    y.indent(mapping=2, sequence=2, offset=0)
    buf = io.StringIO()
    y.dump(CommentedSeq([_commented(device)]), buf)
    return "".join(" " * indent + line if line.strip() else line for line in buf.getvalue().splitlines(True))


def _splice(text: str, data: CommentedMap, device: dict[str, Any]) -> str | None:
    """Insert the rendered device after the last one, or None if the layout is not one we can splice."""
    devices = data.get("devices")
    if not isinstance(devices, CommentedSeq) or not devices or devices.fa.flow_style():
        return None
    keys = list(data.keys())
    lines = text.splitlines(True)
    after = keys.index("devices") + 1
    end = data.lc.key(keys[after])[0] if after < len(keys) else len(lines)
    # Step back over blank lines and comments that belong to the next key (or trail the file).
    while end > 0 and (not lines[end - 1].strip() or lines[end - 1].lstrip().startswith("#")):
        end -= 1
    _, column = devices.lc.item(0)
    dash = max(column - 2, 0)
    if end and not lines[end - 1].endswith("\n"):
        lines[end - 1] += "\n"
    new = render_device(device, dash)
    return "".join([*lines[:end], new, *lines[end:]])


def _validate(text: str, source: str) -> SiteConfig:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:  # pragma: no cover - we rendered it ourselves
        raise ConfigError(f"{source}: the edited file is not valid YAML ({exc})") from None
    return parse_site_config(data, source)


def _load_for_edit(path: Path) -> tuple[str, CommentedMap]:
    """The config's text and its round-trip tree; ConfigError unless the file as it is loads: an edit
    never builds on a broken config (fix that first)."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read it ({exc.strerror})") from None
    y = _yaml()
    try:
        data = y.load(text)
    except YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(data, CommentedMap):
        raise ConfigError(f"{path}: expected a mapping of settings at the top level")
    _validate(text, str(path))
    return text, data


def add_device(path: Path, device: dict[str, Any]) -> SiteConfig:
    """Append ``device`` to the config at ``path``; ConfigError (loader's message) if it does not fit."""
    text, data = _load_for_edit(path)

    new_text = _splice(text, data, device)
    if new_text is not None:
        check = yaml.safe_load(new_text)
        if not isinstance(check, dict) or (check.get("devices") or [None])[-1] != device:
            new_text = None  # an unusual layout: let ruamel write the whole file instead
    if new_text is None:
        devices = data.get("devices")
        if not isinstance(devices, list):
            devices = data["devices"] = CommentedSeq()
        devices.append(_commented(device))
        buf = io.StringIO()
        _yaml().dump(data, buf)
        new_text = buf.getvalue()
    site = _validate(new_text, str(path))
    _write_atomic(path, new_text)
    return site


def _is_filler(line: str) -> bool:
    return not line.strip() or line.lstrip().startswith("#")


_PLAIN = re.compile(r"^[A-Za-z0-9_./:@+-]+$")


def _scalar(value: Any) -> str:
    if isinstance(value, str):
        if _PLAIN.match(value) and yaml.safe_load(value) == value:
            return value
        return json.dumps(value)  # a JSON string is a YAML double-quoted scalar: safe for any password
    return json.dumps(value)


def _splice_section(text: str, data: CommentedMap, section: str, values: dict[str, Any]) -> str | None:
    """Set ``values`` in the block mapping ``section`` line by line, or None if the layout is unusual."""
    lines = text.splitlines(True)
    if lines and not lines[-1].endswith("\n"):
        lines[-1] += "\n"
    keys = list(data.keys())
    if section not in data:
        # A new block before the first of the later sections (and the comments that introduce it).
        later = [k for k in keys if k in ("device_broker_url", "buffer", "devices", "fire_linkage", "access")]
        at = data.lc.key(later[0])[0] if later else len(lines)
        while at > 0 and _is_filler(lines[at - 1]):
            at -= 1
        block = [f"\n{section}:\n", *(f"  {k}: {_scalar(v)}\n" for k, v in values.items())]
        return "".join([*lines[:at], *block, *lines[at:]])
    sec = data[section]
    if not isinstance(sec, CommentedMap) or not sec or sec.fa.flow_style():
        return None
    indent = sec.lc.key(next(iter(sec)))[1]
    sec_keys = list(sec.keys())
    after = keys.index(section) + 1
    end = data.lc.key(keys[after])[0] if after < len(keys) else len(lines)
    while end > 0 and _is_filler(lines[end - 1]):
        end -= 1
    edits: list[tuple[int, int, list[str]]] = []
    added: list[str] = []
    for key, value in values.items():
        line = f"{' ' * indent}{key}: {_scalar(value)}"
        if key not in sec:
            added.append(line + "\n")
            continue
        start = sec.lc.key(key)[0]
        j = sec_keys.index(key)
        stop = sec.lc.key(sec_keys[j + 1])[0] if j + 1 < len(sec_keys) else end
        while stop > start + 1 and _is_filler(lines[stop - 1]):
            stop -= 1
        comment = (sec.ca.items.get(key) or [None] * 3)[2]
        if comment is not None and comment.value.lstrip().startswith("#"):
            line += "  " + comment.value.strip().splitlines()[0]  # keep the key's own trailing comment
        edits.append((start, stop, [line + "\n"]))
    if added:
        edits.append((end, end, added))
    for start, stop, new in sorted(edits, reverse=True):
        lines[start:stop] = new
    return "".join(lines)


def set_section(path: Path, section: str, values: dict[str, Any], *, private: bool = False) -> SiteConfig:
    """Set ``section.key: value`` for each of ``values`` in the config at ``path``, every other line kept;
    ConfigError (loader's message) if the result does not load. ``private``: the file holds a secret
    now, so it is written readable by its owner only (0600)."""
    from steward.commission._cloud import write_private

    text, data = _load_for_edit(path)

    expected = yaml.safe_load(text)
    expected[section] = {**(expected.get(section) or {}), **values}
    new_text = _splice_section(text, data, section, values)
    if new_text is not None and yaml.safe_load(new_text) != expected:
        new_text = None  # a layout the splice misread: let ruamel write the whole file instead
    if new_text is None:
        target = data.get(section)
        if not isinstance(target, CommentedMap):
            target = data[section] = CommentedMap()
        target.update(values)
        buf = io.StringIO()
        _yaml().dump(data, buf)
        new_text = buf.getvalue()
    site = _validate(new_text, str(path))
    if private:
        write_private(path, new_text)
    else:
        _write_atomic(path, new_text)
    return site


def _write_atomic(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        if path.exists():
            os.chmod(tmp, path.stat().st_mode & 0o777)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
