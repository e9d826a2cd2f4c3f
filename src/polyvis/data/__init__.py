"""Data: one conversation record format, synthetic families, converters, datasets and batching."""
