"""Site configuration errors name the file, the path inside it and what is wrong — never a traceback."""

from pathlib import Path

import pytest
import yaml

from steward.config import ConfigError, load_site_config

BASE = {
    "site_id": "oak-garden",
    "site_name": "Oak Garden",
    "gateway_id": "gw-1",
    "devices": [
        {
            "id": "east-gate",
            "kind": "barrier_gate",
            "transport": {"type": "modbus_tcp", "host": "127.0.0.1", "port": 15020, "unit": 1},
            "location": {"lane": "east entrance"},
        },
        {
            "id": "west-gate",
            "kind": "barrier_gate",
            "transport": {"type": "modbus_tcp", "host": "127.0.0.1", "port": 15020, "unit": 2},
        },
    ],
}


def write(tmp_path: Path, data: object) -> Path:
    p = tmp_path / "site.yaml"
    p.write_text(yaml.safe_dump(data) if not isinstance(data, str) else data)
    return p


def error_for(tmp_path: Path, data: object) -> str:
    path = write(tmp_path, data)
    with pytest.raises(ConfigError) as err:
        load_site_config(path)
    msg = str(err.value)
    assert msg.startswith(str(path)), msg
    assert "Traceback" not in msg
    return msg


def with_device(i: int, **changes: object) -> dict:
    data = yaml.safe_load(yaml.safe_dump(BASE))
    for k, v in changes.items():
        if k == "transport":
            data["devices"][i]["transport"].update(v)
        else:
            data["devices"][i][k] = v
    return data


def test_valid_file_loads(tmp_path: Path) -> None:
    site = load_site_config(write(tmp_path, BASE))
    assert [d.id for d in site.devices] == ["east-gate", "west-gate"]
    assert site.devices[0].location.lane == "east entrance"
    assert site.uplink.port == 1883


def test_demo_site_config_is_valid_and_has_every_kind() -> None:
    site = load_site_config(Path(__file__).parent.parent / "config" / "demo-site.yaml")
    kinds = {d.kind for d in site.devices}
    assert kinds == {
        "barrier_gate",
        "door_access",
        "smart_meter",
        "fire_panel",
        "video_intercom",
        "ble_sensor",
    }


def test_unknown_key(tmp_path: Path) -> None:
    msg = error_for(tmp_path, with_device(1, colour="red"))
    assert "devices[1].colour: unknown key" in msg


def test_unknown_key_inside_transport(tmp_path: Path) -> None:
    msg = error_for(tmp_path, with_device(0, transport={"baud": 9600}))
    assert "devices[0].transport.baud: unknown key" in msg


def test_wrong_type(tmp_path: Path) -> None:
    msg = error_for(tmp_path, with_device(1, transport={"unit": "two"}))
    assert "devices[1].transport.unit: Input should be a valid integer" in msg


def test_out_of_range_unit(tmp_path: Path) -> None:
    msg = error_for(tmp_path, with_device(1, transport={"unit": 300}))
    assert "devices[1].transport.unit: Input should be less than or equal to 247" in msg


def test_duplicate_device_id(tmp_path: Path) -> None:
    msg = error_for(tmp_path, with_device(1, id="east-gate", transport={"unit": 3}))
    assert "duplicate device id 'east-gate'" in msg


def test_address_clash_on_one_bus(tmp_path: Path) -> None:
    msg = error_for(tmp_path, with_device(1, transport={"unit": 1}))
    assert "devices 'east-gate' and 'west-gate' share unit 1 on bus tcp://127.0.0.1:15020" in msg


def test_same_unit_on_different_buses_is_fine(tmp_path: Path) -> None:
    site = load_site_config(write(tmp_path, with_device(1, transport={"unit": 1, "port": 15021})))
    assert len(site.devices) == 2


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"nope\.yaml: no such file"):
        load_site_config(tmp_path / "nope.yaml")


def test_missing_required_key(tmp_path: Path) -> None:
    data = dict(BASE)
    del data["gateway_id"]
    assert "gateway_id: required key is missing" in error_for(tmp_path, data)


def test_bad_yaml_names_the_line(tmp_path: Path) -> None:
    msg = error_for(tmp_path, "site_id: a\nsite_name: [unclosed\n")
    assert "not valid YAML at line" in msg


def test_unknown_kind_lists_the_known_ones(tmp_path: Path) -> None:
    msg = error_for(tmp_path, with_device(0, kind="lift"))
    assert "devices[0].kind: Input should be 'barrier_gate'" in msg


def test_unknown_driver_option(tmp_path: Path) -> None:
    msg = error_for(tmp_path, with_device(0, options={"travel_timeout": 3}))
    assert "devices[0].options.travel_timeout: unknown option (device 'east-gate')" in msg


def test_bad_broker_url(tmp_path: Path) -> None:
    data = dict(BASE, uplink={"broker_url": "http://example"})
    assert "uplink.broker_url: broker_url must look like mqtt://host:1883" in error_for(tmp_path, data)


def test_top_level_not_a_mapping(tmp_path: Path) -> None:
    assert "expected a mapping of settings at the top level" in error_for(tmp_path, "- a\n- b\n")


def test_a_misspelt_time_zone_is_refused_with_its_place(tmp_path: Path) -> None:
    """The cloud runs the estate's night rules and schedules on this clock: a typo must not pass as UTC."""
    path = tmp_path / "site.yaml"
    path.write_text("site_id: oak-garden\nsite_name: Oak Garden\ngateway_id: gw-1\ntimezone: Asia/Shangai\n")
    with pytest.raises(ConfigError, match=r"timezone: .*unknown time zone 'Asia/Shangai'"):
        load_site_config(path)
