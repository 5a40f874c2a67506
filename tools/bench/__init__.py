"""Benchmarks: each one measures the device's own code paths and writes a JSON list."""
