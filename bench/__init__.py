"""Benchmarks for pullmedic on the sandbox (not tests): ``python -m bench``."""
