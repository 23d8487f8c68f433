"""Benchmarks of the core: library, batch, API, end to end, supervisor, and the stores' ceiling."""
