"""Benchmarks, run on demand (not by pytest)."""
