"""Devices, telemetry, weight loading and the pool of loaded pipelines. Imports torch lazily."""
