"""Shared transports: Modbus (TCP, RTU), MQTT, BLE."""
