"""Fixtures: one background loop per module, and the cloud (anonymous broker, SQLite) on it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.auth.support import App
from tests.commission.support import BackgroundLoop, Hosted, open_cloud, quiet_logs

SITE_YAML = """\
# Estate {site}: comments must survive `commission register`.
site_id: {site}
site_name: Test Estate {site}
gateway_id: {gateway}

uplink:
  # The estate's broker, as the operations centre gave it.
  broker_url: mqtt://127.0.0.1:{broker_port}   # loopback in tests
  keepalive_s: 30

buffer:
  path: {buffer}

devices: []
# End of the site file.
"""


def write_site(tmp_path: Path, site: str, gateway: str, broker_port: int = 1883) -> Path:
    path = tmp_path / "site.yaml"
    path.write_text(
        SITE_YAML.format(site=site, gateway=gateway, broker_port=broker_port, buffer=tmp_path / "edge.db"),
        encoding="utf-8",
    )
    path.chmod(0o644)  # as an editor would leave it: registration must narrow it
    return path


@pytest.fixture(scope="module")
def bg() -> Iterator[BackgroundLoop]:
    with quiet_logs():
        loop = BackgroundLoop()
        yield loop
        loop.close()


@pytest.fixture(scope="module")
def cloud(bg: BackgroundLoop, tmp_path_factory: pytest.TempPathFactory) -> Iterator[App]:
    state = tmp_path_factory.mktemp("cloud")
    with Hosted(bg, lambda: open_cloud(state)) as app:
        yield app
