"""records: field types, timestamp spellings, type inference and the validation rules."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from tradecli.records import DICT_STRING, TIMESTAMP, from_numpy, normalise

NS = 1_795_444_200_000_000_000  # 2026-11-23 14:30:00 UTC


def batch(**columns: list[object]) -> pa.RecordBatch:
    return pa.record_batch({k: pa.array(v) for k, v in columns.items()})


def test_known_fields_get_canonical_types() -> None:
    good, bad = normalise(
        batch(type=["trade"], symbol=["aapl"], timestamp=[NS], price=[10], volume=[5.0], extra=["kept"])
    )
    assert bad == []
    schema = good.schema
    assert schema.field("type").type == DICT_STRING
    assert schema.field("symbol").type == DICT_STRING
    assert schema.field("timestamp").type == TIMESTAMP
    assert schema.field("price").type == pa.float64()
    assert schema.field("volume").type == pa.int64()
    assert good.column("symbol").to_pylist() == ["AAPL"]
    assert good.column("extra").to_pylist() == ["kept"]


@pytest.mark.parametrize(
    ("value", "expected_ns"),
    [
        (1_795_444_200, NS),  # seconds
        (1_795_444_200_123, NS + 123_000_000),  # ms
        (1_795_444_200_123_456, NS + 123_456_000),  # us
        (NS + 7, NS + 7),  # ns
        (1_795_444_200.5, NS + 500_000_000),  # float seconds
        ("2026-11-23T14:30:00Z", NS),
        ("2026-11-23T09:30:00-05:00", NS),
        ("2026-11-23T14:30:00.123456789Z", NS + 123_456_789),
        ("2026-11-23 14:30:00", NS),  # naive = UTC
    ],
)
def test_timestamp_spellings(value: object, expected_ns: int) -> None:
    good, bad = normalise(batch(type=["trade"], symbol=["X"], timestamp=[value], price=[1.0]))
    assert bad == []
    assert good.column("timestamp").cast(pa.int64()).to_pylist() == [expected_ns]


def test_mixed_timestamp_text_is_parsed_per_value() -> None:
    good, bad = normalise(
        batch(
            type=["trade"] * 3,
            symbol=["X"] * 3,
            price=[1.0] * 3,
            timestamp=["2026-11-23T14:30:00Z", "2026-11-23 14:30:00", "not a time"],
        )
    )
    assert good.column("timestamp").cast(pa.int64()).to_pylist() == [NS, NS]
    assert [r.row for r in bad] == [2]
    assert bad[0].field == "timestamp"


def test_type_is_inferred_from_fields() -> None:
    good, bad = normalise(
        pa.record_batch(
            {
                "symbol": ["A", "B", "C"],
                "timestamp": pa.array([NS] * 3),
                "price": pa.array([1.0, None, None]),
                "bid": pa.array([None, 1.0, None]),
                "ask": pa.array([None, 1.1, None]),
                "open": pa.array([None, None, 1.0]),
                "high": pa.array([None, None, 1.2]),
                "low": pa.array([None, None, 0.9]),
                "close": pa.array([None, None, 1.1]),
            }
        )
    )
    assert bad == []
    assert good.column("type").to_pylist() == ["trade", "quote", "bar"]


@pytest.mark.parametrize(
    ("columns", "field", "fragment"),
    [
        ({"price": [-1.0]}, "price", "expected a finite positive number"),
        ({"price": [0.0]}, "price", "expected a finite positive number"),
        ({"price": [float("nan")]}, "price", "nan"),
        ({"price": [float("inf")]}, "price", "inf"),
        ({"price": ["abc"]}, "price", '"abc", expected a number'),
        ({"volume": [-3]}, "volume", "expected a number >= 0"),
        ({"volume": [2.5]}, "volume", "expected a whole number"),
        ({"symbol": [None]}, "symbol", "missing"),
        ({"symbol": ["  "]}, "symbol", "expected a ticker"),
        ({"timestamp": [32_503_680_000]}, "timestamp", "between 1971 and 2200"),  # the year 3000
        ({"timestamp": [0]}, "timestamp", "between 1971 and 2200"),
        ({"prev_close": [-5.0]}, "prev_close", "positive"),
    ],
)
def test_trade_rules(columns: dict[str, list[object]], field: str, fragment: str) -> None:
    base: dict[str, list[object]] = {
        "type": ["trade"],
        "symbol": ["X"],
        "timestamp": [NS],
        "price": [1.0],
        "volume": [1],
    }
    base.update(columns)
    good, bad = normalise(batch(**base))
    assert good.num_rows == 0
    assert len(bad) == 1
    assert bad[0].field == field
    assert fragment in bad[0].reason


def test_quote_and_bar_rules() -> None:
    good, bad = normalise(
        pa.record_batch(
            {
                "type": ["quote", "quote", "bar", "bar"],
                "symbol": ["A"] * 4,
                "timestamp": pa.array([NS] * 4),
                "bid": pa.array([0.0, -1.0, None, None]),  # a zero bid (no bid) is allowed
                "ask": pa.array([1.0, 1.0, None, None]),
                "open": pa.array([None, None, 1.0, 1.0]),
                "high": pa.array([None, None, 2.0, 1.0]),
                "low": pa.array([None, None, 0.5, 2.0]),
                "close": pa.array([None, None, 1.5, 1.5]),
            }
        )
    )
    assert good.num_rows == 2
    assert [(r.row, r.field) for r in bad] == [(1, "bid"), (3, "high")]


def test_other_record_types_pass_with_few_rules() -> None:
    good, bad = normalise(batch(type=["signal", "heartbeat"], message=["hi", None]))
    assert bad == []
    assert good.num_rows == 2


def test_rows_keep_their_order_around_rejects() -> None:
    prices = [1.0, -1.0, 2.0, float("nan"), 3.0]
    good, bad = normalise(batch(type=["trade"] * 5, symbol=list("ABCDE"), timestamp=[NS] * 5, price=prices))
    assert good.column("symbol").to_pylist() == ["A", "C", "E"]
    assert [r.row for r in bad] == [1, 3]


def test_from_numpy_matches_pa_array() -> None:
    values = np.array([1.5, 2.5, 3.5])
    mask = np.array([False, True, False])
    assert from_numpy(values, mask=mask).equals(pa.array(values, mask=mask))
    flags = np.array([True, False, True, True, False, False, True, False, True])
    assert from_numpy(flags).equals(pa.array(flags))
    assert from_numpy(np.array([NS]), type=TIMESTAMP).equals(pa.array([NS], type=pa.int64()).cast(TIMESTAMP))
