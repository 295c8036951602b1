"""The serving tables' contract: what publish writes and an ad server (the simulator) reads.

- `text_pools.parquet`: per (ad_id, keyword) the texts the ad server rotates, best first, with scores;
- `combos.parquet`: per ad_id its top-k feed combinations, best first, with scores.
"""
from __future__ import annotations

import pyarrow as pa

from plumbing.errors import DataError

TEXT_POOLS_FILE = "text_pools.parquet"
COMBOS_FILE = "combos.parquet"
TEXT_POOL_SCHEMA = pa.schema([("ad_id", pa.string()), ("keyword", pa.string()), ("text", pa.string()),
                              ("score", pa.float64()), ("rank", pa.int32())])
COMBO_SCHEMA = pa.schema([("ad_id", pa.string()), ("rank", pa.int32()), ("title_id", pa.string()),
                          ("image_id", pa.string()), ("highlight_id", pa.string()), ("score", pa.float64())])


def validate(table: pa.Table, schema: pa.Schema, source: str) -> pa.Table:
    """`table` with exactly the schema's columns and types, no nulls, unique ranks; else DataError naming the field."""
    missing = [f.name for f in schema if f.name not in table.column_names]
    if missing:
        raise DataError(f"{source}: missing column(s) {', '.join(missing)}")
    out = {}
    for field in schema:
        column = table.column(field.name)
        if column.null_count:
            raise DataError(f"{source}.{field.name}: {column.null_count} null value(s)")
        try:
            out[field.name] = column.cast(field.type)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as err:
            raise DataError(f"{source}.{field.name}: expected {field.type}, got {column.type} ({err})") from None
    table = pa.table(out, schema=schema)
    keys = [n for n in ("ad_id", "keyword") if n in schema.names]
    seen = set()
    for row in table.select(keys + ["rank"]).to_pylist():
        key = tuple(row.values())
        if key in seen:
            raise DataError(f"{source}.rank: duplicate rank {row['rank']} for {tuple(row[k] for k in keys)}")
        seen.add(key)
    if "text" in schema.names and any(not t.strip() for t in table.column("text").to_pylist()):
        raise DataError(f"{source}.text: empty text")
    return table
