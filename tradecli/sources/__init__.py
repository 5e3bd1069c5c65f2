"""Feeds for ``trade ingest``: one module each, named here.

A feed turns its input into normalised record batches (tradecli.records); ``ingest`` bounds,
filters and writes them.
"""

SOURCES: tuple[str, ...] = ("sim", "file")
