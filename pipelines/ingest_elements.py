"""Stage `ingest_elements`: land the element table delivered with the logs into curated data.

    python -m pipelines.ingest_elements --ds 2026-01-05     # one day (what the Airflow task runs)
    python -m pipelines.ingest_elements --all               # every delivered day (dvc repro)

Reads `data/raw/elements/dt=D/part-*.jsonl[.gz]` (one JSON object per feed element: docs/data_contract.md
"Element table"), checks every line against the contract and writes, per day, atomically:
`data/content/elements/dt=D/part-00000.parquet` (the kept rows: element_id, ad_id, kind, text,
embedding), `data/content/quarantine/dt=D/` (raw_line, reason: the first rule a line breaks) and
`data/content/quality/dt=D/` (rows_in, rows_kept, rows_quarantined, one q_<reason> column per reason);
and `metrics/ingest_elements.json` (every landed day's counts and their totals). rows_in = rows_kept + rows_quarantined is checked before anything
is written. The table is small (one row per live element), so this is plain Python, not Spark. A day
with no delivered element table, or bad params, exits 2 naming it.
"""
from __future__ import annotations

import dataclasses
import gzip
import json
import math
import re
import sys

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from pipelines.schema import (DATA_FILE_PREFIX, DATA_FILE_SUFFIXES, ID_FORBIDDEN, ID_MAX_CHARS, IGNORED_FILE_PREFIXES,
                              LINE_MAX_CHARS, TEXT_FORBIDDEN)
from plumbing import atomic, paths
from plumbing.cli import StageContext, run_stage
from plumbing.config import require
from plumbing.dates import parse_ds
from plumbing.errors import ConfigError, DataError, MissingArtifact
from plumbing.logs import get_logger

log = get_logger("pipelines.ingest_elements")
METRICS_FILE = paths.METRICS / "ingest_elements.json"
KINDS = ("title", "image", "highlight")
TEXT_KINDS = ("title", "highlight")
ELEMENT_TEXT_MAX_CHARS = 200
REASONS = ("malformed_json", "missing_field", "unknown_kind", "bad_id_format", "bad_text", "bad_embedding",
           "duplicate_element_id")
QUALITY_COLUMNS = ("rows_in", "rows_kept", "rows_quarantined") + tuple(f"q_{r}" for r in REASONS)
EMBEDDING_ABS_MAX = 1e6
_ID_BAD, _TEXT_BAD = re.compile(ID_FORBIDDEN), re.compile(TEXT_FORBIDDEN)


@dataclasses.dataclass
class IngestElementsConfig:
    embedding_dim: int  # the contract's image embedding length

    def __post_init__(self):
        require(1 <= self.embedding_dim <= 4096, "ingest_elements.embedding_dim",
                f"must be in [1, 4096], got {self.embedding_dim}")


def schema(embedding_dim: int) -> pa.Schema:
    return pa.schema([("element_id", pa.string()), ("ad_id", pa.string()), ("kind", pa.string()),
                      ("text", pa.string()), ("embedding", pa.list_(pa.float32(), embedding_dim))])


def check_line(line: str, embedding_dim: int) -> tuple[dict | None, str | None]:
    """(the row, None) when the line honours the contract, else (None, the first reason it breaks)."""
    if len(line) > LINE_MAX_CHARS:
        return None, "malformed_json"
    try:
        obj = json.loads(line)
    except ValueError:
        return None, "malformed_json"
    if not isinstance(obj, dict):
        return None, "malformed_json"
    if any(obj.get(f) is None for f in ("element_id", "ad_id", "kind")):
        return None, "missing_field"
    if obj["kind"] not in KINDS:
        return None, "unknown_kind"
    if obj["kind"] in TEXT_KINDS and obj.get("text") is None or obj["kind"] == "image" and obj.get("embedding") is None:
        return None, "missing_field"
    for f in ("element_id", "ad_id"):
        v = obj[f]
        if not isinstance(v, str) or not 1 <= len(v) <= ID_MAX_CHARS or _ID_BAD.search(v):
            return None, "bad_id_format"
    row = {"element_id": obj["element_id"], "ad_id": obj["ad_id"], "kind": obj["kind"], "text": None, "embedding": None}
    if obj["kind"] in TEXT_KINDS:
        text = obj["text"]
        if not isinstance(text, str) or not 1 <= len(text) <= ELEMENT_TEXT_MAX_CHARS or _TEXT_BAD.search(text):
            return None, "bad_text"
        row["text"] = text
    else:
        emb = obj["embedding"]
        if not isinstance(emb, list) or len(emb) != embedding_dim or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                and abs(v) < EMBEDDING_ABS_MAX for v in emb):
            return None, "bad_embedding"
        row["embedding"] = [float(v) for v in emb]
    return row, None


def read_lines(ds: str) -> list[str]:
    """Every line of the day's delivered element files (MissingArtifact when none; DataError when unreadable)."""
    folder = paths.partition(paths.RAW_ELEMENTS, ds)
    if not folder.is_dir():
        raise MissingArtifact(f"no element table delivered for {ds}: {folder} is missing")
    lines = []
    for f in sorted(folder.iterdir()):
        if f.name.startswith(IGNORED_FILE_PREFIXES):
            continue
        if not (f.is_file() and f.name.startswith(DATA_FILE_PREFIX) and f.name.endswith(DATA_FILE_SUFFIXES)):
            raise DataError(f"{f}: not an element data file (part-*.jsonl or part-*.jsonl.gz)")
        try:
            data = gzip.decompress(f.read_bytes()) if f.name.endswith(".gz") else f.read_bytes()
        except (OSError, EOFError) as err:
            raise DataError(f"{f}: cannot be read to its end ({err})") from None
        lines += data.decode("utf-8", errors="replace").splitlines()
    return lines


def land(lines: list[str], embedding_dim: int) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """(kept rows, quarantined lines with their reason, the quality counts) of one day's lines."""
    kept, quarantined, seen = [], [], set()
    for line in lines:
        row, reason = check_line(line, embedding_dim)
        if row is not None and (row["ad_id"], row["element_id"]) in seen:
            row, reason = None, "duplicate_element_id"
        if row is None:
            quarantined.append({"raw_line": line[:LINE_MAX_CHARS], "reason": reason})
        else:
            seen.add((row["ad_id"], row["element_id"]))
            kept.append(row)
    quality = {"rows_in": len(lines), "rows_kept": len(kept), "rows_quarantined": len(quarantined),
               **{f"q_{r}": sum(q["reason"] == r for q in quarantined) for r in REASONS}}
    if quality["rows_in"] != quality["rows_kept"] + quality["rows_quarantined"]:
        raise DataError(f"element rows do not conserve: {quality}")  # a bug, never written
    kept_frame = pd.DataFrame(kept, columns=["element_id", "ad_id", "kind", "text", "embedding"])
    return kept_frame, pd.DataFrame(quarantined, columns=["raw_line", "reason"]), quality


def write_day(ds: str, kept: pd.DataFrame, quarantined: pd.DataFrame, quality: dict, embedding_dim: int) -> None:
    tables = {"elements": pa.Table.from_pandas(kept, schema=schema(embedding_dim), preserve_index=False),
              "quarantine": pa.Table.from_pandas(quarantined, preserve_index=False),
              "quality": pa.Table.from_pylist([quality])}
    for name, table in tables.items():
        with atomic.directory(paths.partition(paths.content_table(name), ds)) as out:
            pq.write_table(table, out / "part-00000.parquet")


def land_day(ds: str, embedding_dim: int) -> dict:
    """Read, check and write one delivered day; its quality counts."""
    kept, quarantined, quality = land(read_lines(ds), embedding_dim)
    write_day(ds, kept, quarantined, quality, embedding_dim)
    return quality


def days_to_land(ctx: StageContext) -> list[str]:
    if (ctx.ds is None) == (not ctx.args.all):
        raise ConfigError("give one of --ds YYYY-MM-DD or --all")
    if ctx.ds:
        return [parse_ds(ctx.ds).isoformat()]
    days = paths.partitions(paths.RAW_ELEMENTS)
    if not days:
        raise MissingArtifact(f"no element table delivered under {paths.RAW_ELEMENTS}: run simulate first")
    return days


def run(ctx: StageContext) -> None:
    cfg = ctx.config(IngestElementsConfig)
    for ds in days_to_land(ctx):
        quality = land_day(ds, cfg.embedding_dim)
        log.info("%s: %d element rows in, %d kept, %d quarantined", ds, quality["rows_in"], quality["rows_kept"],
                 quality["rows_quarantined"])
    atomic.write_json(METRICS_FILE, quality_metrics())


def quality_metrics() -> dict:
    """Per day and in total, the quality counts of every landed partition (not only this run's days:
    a daily --ds run must not shrink the metrics to one day)."""
    table = paths.content_table("quality")
    per_day = {}
    for ds in paths.partitions(table):
        row = pq.read_table(paths.partition(table, ds)).to_pylist()[0]
        per_day[ds] = {c: int(row.get(c) or 0) for c in QUALITY_COLUMNS}
    totals = {c: sum(q[c] for q in per_day.values()) for c in QUALITY_COLUMNS}
    return {"days": per_day, "totals": totals}


def add_arguments(parser) -> None:
    parser.add_argument("--all", action="store_true", help="land every delivered day")


def main(argv=None) -> int:
    return run_stage("ingest_elements", __doc__, run, argv, ds="partition", add_arguments=add_arguments)


if __name__ == "__main__":
    sys.exit(main())
