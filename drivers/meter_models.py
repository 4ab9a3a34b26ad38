"""Register tables of supported meters: data, not code. Adding a model is adding a table here
(or describing it in a device's ``options.points`` with model ``generic``).

Sources: Eastron SDM120-Modbus and SDM630-Modbus v2 protocol documents (input registers, function
code 4, IEEE-754 float32, high word first); CHINT DDSU666 Modbus map (float32 high word first,
power in kW, which ``scale`` turns into W so every model reports the same units); a generic
RS-485 ultrasonic water meter whose floats arrive fully byte-swapped (DCBA).

Each model: ``points`` (for :class:`drivers.points.Point`), ``tamper_increase`` (points whose
increase means tampering, e.g. reverse flow), ``status`` (optional status register and bit names,
``tamper_bits`` among them).
"""

from __future__ import annotations

from typing import Any

__all__ = ["METER_MODELS"]

_SDM_COMMON = [
    {"name": "frequency_hz", "address": 0x0046, "unit": "Hz"},
    {"name": "energy_import_kwh", "address": 0x0048, "unit": "kWh"},
    {"name": "energy_export_kwh", "address": 0x004A, "unit": "kWh"},
    {"name": "energy_total_kwh", "address": 0x0156, "unit": "kWh"},
]

METER_MODELS: dict[str, dict[str, Any]] = {
    "sdm120": {
        "points": [
            {"name": "voltage_v", "address": 0x0000, "unit": "V"},
            {"name": "current_a", "address": 0x0006, "unit": "A"},
            {"name": "power_w", "address": 0x000C, "unit": "W"},
            {"name": "apparent_power_va", "address": 0x0012, "unit": "VA"},
            {"name": "reactive_power_var", "address": 0x0018, "unit": "var"},
            {"name": "power_factor", "address": 0x001E, "unit": ""},
            *_SDM_COMMON,
        ],
        "tamper_increase": [],
    },
    "sdm630": {
        "points": [
            {"name": "voltage_l1_v", "address": 0x0000, "unit": "V"},
            {"name": "voltage_l2_v", "address": 0x0002, "unit": "V"},
            {"name": "voltage_l3_v", "address": 0x0004, "unit": "V"},
            {"name": "current_l1_a", "address": 0x0006, "unit": "A"},
            {"name": "current_l2_a", "address": 0x0008, "unit": "A"},
            {"name": "current_l3_a", "address": 0x000A, "unit": "A"},
            {"name": "power_l1_w", "address": 0x000C, "unit": "W"},
            {"name": "power_l2_w", "address": 0x000E, "unit": "W"},
            {"name": "power_l3_w", "address": 0x0010, "unit": "W"},
            {"name": "power_w", "address": 0x0034, "unit": "W"},
            *_SDM_COMMON,
        ],
        "tamper_increase": [],
    },
    "ddsu666": {
        "points": [
            {"name": "voltage_v", "address": 0x2000, "unit": "V"},
            {"name": "current_a", "address": 0x2002, "unit": "A"},
            {"name": "power_w", "address": 0x2004, "scale": 1000.0, "unit": "W"},
            {"name": "reactive_power_var", "address": 0x2006, "scale": 1000.0, "unit": "var"},
            {"name": "power_factor", "address": 0x200A, "unit": ""},
            {"name": "frequency_hz", "address": 0x200E, "unit": "Hz"},
            {"name": "energy_import_kwh", "address": 0x4000, "unit": "kWh"},
            {"name": "energy_export_kwh", "address": 0x400A, "unit": "kWh"},
        ],
        "tamper_increase": [],
    },
    "water_rs485": {
        "points": [
            {"name": "volume_forward_m3", "table": "holding", "address": 0, "order": "DCBA", "unit": "m3"},
            {"name": "volume_reverse_m3", "table": "holding", "address": 2, "order": "DCBA", "unit": "m3"},
            {"name": "flow_m3h", "table": "holding", "address": 4, "order": "DCBA", "unit": "m3/h"},
        ],
        # holding register 6: bit 0 empty pipe, bit 1 valve open, bit 2 magnetic tamper
        "status": {"table": "holding", "address": 6, "bits": {0: "empty_pipe", 1: "valve_open", 2: "magnet"}},
        "tamper_bits": ["magnet"],
        "tamper_increase": ["volume_reverse_m3"],
    },
}
