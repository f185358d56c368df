"""Operator tooling: CLI, dev fleet, benches, chaos. Nothing imports it."""
