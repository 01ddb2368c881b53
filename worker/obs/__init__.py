"""Observability: Prometheus metrics, logs and the stats snapshot."""
