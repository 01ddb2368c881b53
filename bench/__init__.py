"""Benchmarks of leadsync and its baselines, run by hand: ``python -m bench.run <scenario>``."""
