"""tradecli: a real-time market-data pipeline assembled in the shell.

    trade ingest --source sim | trade enrich | trade screen | trade alert

Every stage is also a plain function in :mod:`tradecli.stages`.
"""

__version__ = "0.1.0"
__release_date__ = "2026-11-24"  # man pages carry this date, never today's
