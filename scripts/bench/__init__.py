"""Benchmarks: each prints ratios against a baseline measured in the same
run (`python -m scripts.bench.NAME --help`); `docs/benchmarks.md` has the
latest figures."""
