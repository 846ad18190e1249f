"""Helpers for tuneloop's own tests and benchmarks (no network, no hub)."""
