"""Benchmarks that measure this project's transfer against peer tools in the same run."""
