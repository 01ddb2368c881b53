"""Baselines the benchmarks compare leadsync with: Celery + zeep, per lead and batched."""
