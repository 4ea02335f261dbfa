"""Benchmark harness for interest-selection strategies in multi-interest recommenders."""

__version__ = "0.1.0"
