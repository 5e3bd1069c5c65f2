"""The tick store behind ``trade store``: a write-ahead log on local disk, rolled into Parquet.

Layout (Hive-style, readable by DuckDB, Polars, Spark and pyarrow as it is)::

    PATH/type=<record type>/date=<YYYY-MM-DD, America/New_York>/part-<seq>.parquet
    PATH/type=<record type>/date=<...>/part-<first seq>-<last seq>.parquet   (compacted)
    PATH/_tradecli/wal/<seq>.arrows                                           (local stores)

How a record becomes durable, and why a crash at any point neither loses nor duplicates it:

1. Each input batch is appended to the open WAL segment ``<seq>.arrows`` (Arrow IPC stream
   messages) and fsynced; only then is it counted as stored.
2. Every ``roll_rows`` records or ``roll_interval`` seconds the segment is closed and its rows are
   split by (type, New York date), sorted by (symbol, timestamp), and written as one Parquet file
   per partition named after the segment: ``part-<seq>.parquet``. On a local disk the file is
   written as ``.part-<seq>.parquet.tmp``, fsynced, linked to its final name (which never
   replaces an existing file) and the directory is fsynced; on an object store the object is
   uploaded under its final key, which appears only when the upload completes.
3. Only when every partition of segment ``seq`` is published is the segment deleted.

On start, segments left behind are replayed: a torn tail is truncated to its last whole batch
(with a warning), and each partition is published unless a file already covers ``seq`` - one
named ``part-<seq>`` or a compacted ``part-<a>-<b>`` with ``a <= seq <= b``. Segments are
published strictly in order, so a file with a higher seq anywhere implies every lower segment was
published in full; that is what makes the range check exact after compaction.
"""
