"""Faithful device simulators speaking the real protocols on real ports."""
