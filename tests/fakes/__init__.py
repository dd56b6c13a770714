"""Loopback servers that answer like the cloud providers' APIs (tests and benchmarks)."""
