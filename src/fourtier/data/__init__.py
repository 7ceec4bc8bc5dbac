"""Datasets: the output contract of `download`, and one module per kind of source."""
