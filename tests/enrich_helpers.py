"""What the enrich tests share: a bit-for-bit comparison of two enriched streams."""

from __future__ import annotations

import numpy as np
import pyarrow as pa


def assert_same_bits(got: pa.Table, want: pa.Table) -> None:
    """The same columns, nulls and values to the last bit (Arrow's equals takes -0.0 for 0.0)."""
    assert got.schema.names == want.schema.names
    for name in want.schema.names:
        x, y = got.column(name).combine_chunks(), want.column(name).combine_chunks()
        assert x.equals(y), name
        if pa.types.is_floating(x.type):
            valid = np.asarray(x.is_valid())
            bits = [np.asarray(c.fill_null(0.0).to_numpy()).view(np.int64)[valid] for c in (x, y)]
            assert np.array_equal(*bits), name
