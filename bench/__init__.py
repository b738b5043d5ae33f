"""The benchmark suite of issue #4: ``python -m bench`` (see README, "Benchmarks")."""
