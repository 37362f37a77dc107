"""Runs inside the exporter container; see `components.containers`."""
