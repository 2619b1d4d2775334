"""Benchmarks of rlkit against its peers and the compute floor (run as modules: `python -m benchmarks.harness`)."""
