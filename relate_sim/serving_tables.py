"""The serving tables a champion is published as, and what the simulator serves from them.

The one definition of their schemas (docs/simulator.md documents them). The simulator reads
only these tables, never model internals:

- `text_pools.parquet`: per (ad_id, keyword) the texts the ad server rotates, with scores;
- `combos.parquet`: per ad_id its top-k feed combinations, with scores.

Serving (relate_sim/champion.py): on an impression of ad a, with probability 1 - eps_a (eps_a:
the logging policy's exploration of the ad) the champion's entry is served, uniform over its
rows; with probability eps_a the logging policy explores (uniform over the ad's servable pool
texts, or over all its combinations). The logged propensity is the mixture's probability of
the served creative. (ad, keyword) and ads without rows are served by the logging policy.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from plumbing.errors import DataError, MissingArtifact

TEXT_POOLS_FILE = "text_pools.parquet"
COMBOS_FILE = "combos.parquet"
TEXT_POOL_SCHEMA = pa.schema([("ad_id", pa.string()), ("keyword", pa.string()), ("text", pa.string()),
                              ("score", pa.float64()), ("rank", pa.int32())])
COMBO_SCHEMA = pa.schema([("ad_id", pa.string()), ("rank", pa.int32()), ("title_id", pa.string()),
                          ("image_id", pa.string()), ("highlight_id", pa.string()), ("score", pa.float64())])


@dataclasses.dataclass
class ServingTables:
    """A champion's serving tables, validated: rows ordered by rank within their key."""

    text_pools: dict[tuple[str, str], list[str]]  # (ad_id, keyword) -> texts, best first
    combos: dict[str, list[tuple[str, str, str]]]  # ad_id -> (title_id, image_id, highlight_id), best first
    version: str  # the champion's version (recorded in the day's state summary)

    @classmethod
    def load(cls, directory: str | Path, version: str | None = None) -> "ServingTables":
        directory = Path(directory)
        tables = {}
        for name, schema in ((TEXT_POOLS_FILE, TEXT_POOL_SCHEMA), (COMBOS_FILE, COMBO_SCHEMA)):
            path = directory / name
            if not path.is_file():
                raise MissingArtifact(f"serving table {path} is missing")
            tables[name] = validate(pq.read_table(path), schema, str(path))
        return cls.from_tables(tables[TEXT_POOLS_FILE], tables[COMBOS_FILE], version or directory.name)

    @classmethod
    def from_tables(cls, text_pools: pa.Table, combos: pa.Table, version: str) -> "ServingTables":
        text_pools = validate(text_pools, TEXT_POOL_SCHEMA, TEXT_POOLS_FILE)
        combos = validate(combos, COMBO_SCHEMA, COMBOS_FILE)
        pools: dict[tuple[str, str], list[str]] = {}
        for row in sorted(text_pools.to_pylist(), key=lambda r: (r["ad_id"], r["keyword"], r["rank"])):
            pools.setdefault((row["ad_id"], row["keyword"]), []).append(row["text"])
        top: dict[str, list[tuple[str, str, str]]] = {}
        for row in sorted(combos.to_pylist(), key=lambda r: (r["ad_id"], r["rank"])):
            top.setdefault(row["ad_id"], []).append((row["title_id"], row["image_id"], row["highlight_id"]))
        return cls(text_pools=pools, combos=top, version=version)


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
