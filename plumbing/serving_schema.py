"""The serving tables' contract: what publish writes and an ad server (the simulator) reads.

- `text_pools.parquet`: per (ad_id, keyword) the texts the ad server rotates, best first, with scores;
- `combos.parquet`: per ad_id its top-k feed combinations, best first, with scores;
- `prompt_pools.parquet`: per (vertical, keyword) prompt (`prompt_id` "vertical|keyword") the pool
  `text_pools` repeats for each ad, for every served prompt and every held-out prompt of the
  evaluation, so that the evaluate stage and publish's re-scoring of a champion serve what the
  ad server serves instead of sampling the policy again (the ad server itself reads only the first two).
"""
from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from plumbing.errors import DataError, MissingArtifact

TEXT_POOLS_FILE = "text_pools.parquet"
COMBOS_FILE = "combos.parquet"
PROMPT_POOLS_FILE = "prompt_pools.parquet"
TEXT_POOL_SCHEMA = pa.schema([("ad_id", pa.string()), ("keyword", pa.string()), ("text", pa.string()),
                              ("score", pa.float64()), ("rank", pa.int32())])
COMBO_SCHEMA = pa.schema([("ad_id", pa.string()), ("rank", pa.int32()), ("title_id", pa.string()),
                          ("image_id", pa.string()), ("highlight_id", pa.string()), ("score", pa.float64())])
# pooled: False where the prompt serves plain samples (serving.pool_candidates 0, or no compliant candidate)
PROMPT_POOL_SCHEMA = pa.schema([("prompt_id", pa.string()), ("vertical", pa.string()), ("keyword", pa.string()),
                                ("rank", pa.int32()), ("text", pa.string()), ("score", pa.float64()),
                                ("pooled", pa.bool_())])


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
    keys = ["prompt_id"] if "prompt_id" in schema.names else [n for n in ("ad_id", "keyword") if n in schema.names]
    seen = set()
    for row in table.select(keys + ["rank"]).to_pylist():
        key = tuple(row.values())
        if key in seen:
            raise DataError(f"{source}.rank: duplicate rank {row['rank']} for {tuple(row[k] for k in keys)}")
        seen.add(key)
    if "text" in schema.names and any(not t.strip() for t in table.column("text").to_pylist()):
        raise DataError(f"{source}.text: empty text")
    return table


def read_prompt_pools(path: str | Path) -> tuple[dict[str, list[str]], set[str]]:
    """(prompt_id -> its pool's texts in rank order, the prompt_ids that serve plain samples) of a
    prompt_pools file, validated; MissingArtifact when there is none."""
    path = Path(path)
    if not path.is_file():
        raise MissingArtifact(f"no prompt pools at {path}: run `python -m pipelines.serving_tables` first")
    rows = validate(pq.read_table(path), PROMPT_POOL_SCHEMA, str(path)).to_pylist()
    pools: dict[str, list[str]] = {}
    for row in sorted(rows, key=lambda r: (r["prompt_id"], r["rank"])):
        pools.setdefault(row["prompt_id"], []).append(row["text"])
    return pools, {r["prompt_id"] for r in rows if not r["pooled"]}
