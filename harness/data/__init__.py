"""Data layer: readers, preprocessing, caching, splits, batching, synthetic data."""
