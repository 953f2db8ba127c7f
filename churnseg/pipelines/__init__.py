"""Wiring: config loading, sources and sinks, Prefect tasks and flows, command line."""
