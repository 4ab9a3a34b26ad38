"""The gateway runtime: drivers in, buffer, uplink out, commands down."""
