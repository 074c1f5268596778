"""Benchmarks: run with `python -m bench.<name>`; figures go to stdout and `bench/results/<name>.json`."""
