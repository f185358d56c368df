"""Shared pieces below the service and the runner."""
