"""One driver per device kind, over shared transports."""
