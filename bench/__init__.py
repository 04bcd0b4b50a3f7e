"""Benchmarks (never part of the test run): `make bench` (CPU) and `make bench-gpu` (one CUDA GPU).

Every figure is a ratio of two variants measured side by side in the same run (interleaved,
several repetitions, median) plus the absolute values, written to bench/results/NAME.json.
"""
