"""Metrics: the HTTP recorders' families, process metrics, the exposition and the JSON summary."""
