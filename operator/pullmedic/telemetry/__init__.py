"""Prometheus metrics: the one module every layer may report to."""
