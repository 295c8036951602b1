"""The serving tables a champion is published as, and what the simulator serves from them.

Their schemas are plumbing.serving_schema (the contract between publish and the ad server;
docs/simulator.md documents them). The simulator reads only these tables, never model internals:

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

from plumbing.errors import MissingArtifact
from plumbing.serving_schema import (
    COMBO_SCHEMA,
    COMBOS_FILE,
    TEXT_POOL_SCHEMA,
    TEXT_POOLS_FILE,
    validate,
)


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
