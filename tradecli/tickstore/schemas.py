"""Each record type keeps its own schema; a new column is added, never dropped.

The registry knows, for every record type, the columns its stored files have (seeded from the
newest file of each type when the store opens) and grows as new columns arrive. A file written
later has every column an earlier one had, null where the new records have no value, so readers
that unify schemas by name (DuckDB's ``union_by_name``, pyarrow datasets) see one table.

A column is added to a type only when a record of that type has a value in it: trades carry no
``bid``, so a trade file has no ``bid`` column even when trades and quotes arrive in one batch.
A value whose type cannot join the column's stored type (text in a numeric column of unknown
meaning) is a bad record: it is reported and kept out, before it is acknowledged, rather than
making the next roll fail. Numeric types widen (int64 joins float64 as float64).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from tradecli.records import coerce_column, describe, from_numpy, malformed, rebuild_dictionaries
from tradecli.tickstore.layout import valid_type

# (row, field, reason) for each rejected record of a batch
RejectRows = Callable[[pa.RecordBatch, list[tuple[int, str | None, str]]], None]


def type_codes(batch: pa.RecordBatch) -> tuple[list[str | None], np.ndarray]:
    """The batch's ``type`` dictionary and each row's index into it (-1 where missing)."""
    col = batch.column(batch.schema.get_field_index("type"))
    if not pa.types.is_dictionary(col.type):
        col = col.cast(pa.string()).dictionary_encode()
    names = col.dictionary.cast(pa.string()).to_pylist()
    codes = col.indices.fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int32)
    return names, codes


def valid_mask(col: pa.Array) -> np.ndarray:
    """Which values are not null, as numpy booleans: the validity bitmap unpacked (ten times
    faster than converting ``is_valid()``)."""
    if not col.null_count:
        return np.ones(len(col), dtype=bool)
    bitmap = col.buffers()[0]
    if bitmap is None or pa.types.is_null(col.type) or pa.types.is_union(col.type):
        return np.asarray(col.is_valid())
    bits = np.unpackbits(
        np.frombuffer(bitmap, dtype=np.uint8), count=col.offset + len(col), bitorder="little"
    )
    mask: np.ndarray = bits[col.offset :].view(bool)
    return mask


def _join(current: pa.DataType, new: pa.DataType) -> pa.DataType | None:
    """The type both fit in, or None when they cannot share a column."""
    if current == new:
        return current
    if pa.types.is_dictionary(current) and pa.types.is_dictionary(new):
        return current if current.value_type == new.value_type else None
    try:
        merged = pa.unify_schemas(
            [pa.schema([("x", current)]), pa.schema([("x", new)])], promote_options="permissive"
        )
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
        return None
    joined = merged.field("x").type
    # a join that turns numbers into text, or text into numbers, would change what stored
    # values mean: only widening within a kind is allowed
    if pa.types.is_string(joined) != pa.types.is_string(current) and not pa.types.is_null(current):
        return None
    return joined


@dataclass
class SchemaRegistry:
    schemas: dict[str, pa.Schema] = field(default_factory=dict)

    def seed(self, rtype: str, schema: pa.Schema) -> None:
        """Adopt the columns of a stored file (the store's memory across restarts)."""
        schema = pa.schema([f for f in schema.remove_metadata() if f.name != "type"])
        current = self.schemas.get(rtype)
        if current is None:
            self.schemas[rtype] = schema
            return
        for f in schema:
            if current.get_field_index(f.name) < 0:
                current = current.append(f)
        self.schemas[rtype] = current

    def snapshot(self) -> dict[str, pa.Schema]:
        return dict(self.schemas)

    def admit(
        self, batch: pa.RecordBatch, reject: RejectRows | None = None, *, lenient: bool = False
    ) -> list[pa.RecordBatch]:
        """Record new columns, widen types, and drop rows whose values cannot be stored.

        Returns the batches to append: ``[batch]`` itself when nothing was wrong, else the good
        rows split by record type with each column in its type's stored type. Rows with a bad
        record type (one that cannot be a directory name) are rejected here too, and so are
        values Arrow's full validation refuses (text that is not UTF-8, offsets or dictionary
        indices out of range: the Arrow IPC reader checks only the layout): such a record would
        be acknowledged, and recovery would then take its batch for a torn log tail. ``lenient``
        (replaying records that were already acknowledged) keeps rows whose values do not fit
        their column; the roll then converts what it can.
        """
        if batch.num_rows == 0:
            return []
        problems: list[tuple[int, str | None, str]] = []
        if not lenient:
            try:
                batch.validate(full=True)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                problems += [
                    (row, name, f"field '{name}' cannot be stored: {why}")
                    for row, name, why in malformed(batch)
                ]
        names, codes = type_codes(batch)
        counts = np.bincount(codes + 1, minlength=len(names) + 1)
        present = [i for i in range(len(names)) if counts[i + 1]]
        problems += [(row, "type", "field 'type' is missing") for row in np.flatnonzero(codes < 0).tolist()]
        bad_type = [i for i in present if names[i] is None or not valid_type(str(names[i]))]
        for i in bad_type:
            for row in np.flatnonzero(codes == i).tolist():
                problems.append(
                    (
                        row,
                        "type",
                        f"field 'type' is {describe(names[i])}, expected a record type made of "
                        "letters, digits, '_', '.' and '-'",
                    )
                )
        masks: dict[int, np.ndarray] = {}
        single = len(present) == 1 and not counts[0]

        def rows_of(i: int) -> np.ndarray:
            if i not in masks:
                masks[i] = codes == i
            return masks[i]

        for i in present:
            if i in bad_type:
                continue
            rtype = str(names[i])
            schema = self.schemas.get(rtype, pa.schema([]))
            grown = schema
            for name, col in zip(batch.schema.names, batch.columns, strict=True):
                if name == "type" or pa.types.is_null(col.type) or col.null_count == len(col):
                    continue
                index = grown.get_field_index(name)
                if index < 0:
                    if single or not col.null_count or bool(np.any(valid_mask(col) & rows_of(i))):
                        grown = grown.append(pa.field(name, col.type))
                    continue
                stored = grown.field(index).type
                if stored == col.type:
                    continue
                joined = _join(stored, col.type)
                if joined is not None:
                    grown = grown.set(index, pa.field(name, joined))
                    continue
                if not lenient:
                    problems.extend(self._unstorable(batch, col, name, stored, rtype, rows_of(i)))
            if grown is not schema:
                self.schemas[rtype] = grown
        if not problems:
            return [batch]
        first: dict[int, tuple[int, str | None, str]] = {}
        for problem in sorted(problems):
            first.setdefault(problem[0], problem)  # one reason per record
        if reject is not None:
            reject(batch, list(first.values()))
        keep = np.ones(batch.num_rows, dtype=bool)
        keep[[row for row, _, _ in problems]] = False
        return self._convert(rebuild_dictionaries(batch.filter(from_numpy(keep))))

    def _unstorable(
        self,
        batch: pa.RecordBatch,
        col: pa.Array,
        name: str,
        stored: pa.DataType,
        rtype: str,
        rows: np.ndarray,
    ) -> list[tuple[int, str | None, str]]:
        """Rows of ``rtype`` whose value in ``name`` cannot become the stored type."""
        wanted = np.flatnonzero(rows & valid_mask(col))
        _, bad = coerce_column(col.take(pa.array(wanted)), stored)
        out: list[tuple[int, str | None, str]] = []
        for position, value in bad.items():
            out.append(
                (
                    int(wanted[position]),
                    name,
                    f"field '{name}' is {describe(value)}, expected {stored} "
                    f"(the type of '{name}' in stored {rtype} records)",
                )
            )
        return out

    def _convert(self, batch: pa.RecordBatch) -> list[pa.RecordBatch]:
        """After rejects, split the batch by type so each column can be cast to its type's schema."""
        if batch.num_rows == 0:
            return []
        names, codes = type_codes(batch)
        parts = []
        for i in np.unique(codes).tolist():
            if i < 0:
                continue
            part = batch.filter(from_numpy(codes == i))
            schema = self.schemas.get(str(names[i]))
            if schema is None:
                parts.append(part)
                continue
            columns = []
            for col_name, col in zip(part.schema.names, part.columns, strict=True):
                index = schema.get_field_index(col_name)
                if index >= 0 and col.type != schema.field(index).type and not pa.types.is_null(col.type):
                    col, _ = coerce_column(col, schema.field(index).type)
                columns.append(col)
            parts.append(pa.record_batch(columns, names=part.schema.names))
        return parts
