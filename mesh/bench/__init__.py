"""Benchmarks behind ``mesh bench``: each returns a JSON-able dict of measured figures."""
