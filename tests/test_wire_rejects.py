"""A bad row in an Arrow input is reported like any other, ns timestamps and all."""

from __future__ import annotations

import io
from pathlib import Path

import orjson
import pyarrow as pa
from conftest import invoke, ndjson_records


def test_bad_arrow_row_is_reported_with_its_record(tmp_path: Path) -> None:
    ns = 1_795_185_000_000_000_003
    batch = pa.record_batch(
        {
            "type": pa.array(["trade", "trade"]).dictionary_encode(),
            "symbol": pa.array(["X", "Y"]).dictionary_encode(),
            "timestamp": pa.array([ns, ns + 1]).cast(pa.timestamp("ns", tz="UTC")),
            "price": [1.0, -2.0],
        }
    )
    sink = io.BytesIO()
    with pa.ipc.new_stream(sink, batch.schema) as writer:
        writer.write_batch(batch)
    errors = tmp_path / "errors.ndjson"
    result = invoke(
        ["ingest", "--source", "file", "-", "--format", "ndjson", "--errors", str(errors)],
        input=sink.getvalue(),
    )
    assert result.exit_code == 0, result.stderr
    assert [r["symbol"] for r in ndjson_records(result.stdout_bytes)] == ["X"]
    assert "batch 1 row 2: field 'price' is -2.0" in result.stderr
    (kept,) = [orjson.loads(line) for line in errors.read_bytes().splitlines()]
    assert kept["record"]["timestamp"] == ns + 1
    assert kept["record"]["symbol"] == "Y"
