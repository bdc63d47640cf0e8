"""Tests of the benchmark tooling that runs without the benchmarks themselves."""
