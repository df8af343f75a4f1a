"""Benchmarks of tokenproxy against a baseline run side by side (``python -m loadtest``)."""
