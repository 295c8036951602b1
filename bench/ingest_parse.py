"""Where the Spark ingest's parse time goes: each piece of sql/parse_day.sql timed alone.

    python bench/ingest_parse.py [--workdir /tmp/relate_parse_bench] [--days 4]

Generates (or reuses) bench/ingest.py's raw logs, then times with Spark's `noop` sink
(everything computed, nothing written), master local[2]: reading the gzipped lines,
`from_json` on them with the all-string schema (what refused lines get) and with the
contract's types (what every line gets first), the JSON source with the all-string schema,
the bad-type regex, the whole parse with and without its dedupe window, and the parse materialized
as pipelines.ingest does. Every variant runs twice; the second round (JIT warm) is the
one to compare.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.ingest import raw_logs  # noqa: E402
from plumbing import paths  # noqa: E402
from plumbing.dates import day_bounds_ms  # noqa: E402

SCHEMA = ("event_id STRING, event_type STRING, ts STRING, impression_id STRING, click_id STRING, user_id STRING, "
          "user_segment STRING, placement STRING, vertical STRING, advertiser_id STRING, product_id STRING, "
          "ad_id STRING, position STRING, query STRING, keyword STRING, text_id STRING, ad_text STRING, "
          "title_id STRING, image_id STRING, highlight_id STRING, propensity STRING, value STRING, "
          "_corrupt_record STRING")
TYPED_SCHEMA = (SCHEMA.replace("ts STRING", "ts BIGINT").replace("position STRING", "position INT")
                .replace("propensity STRING", "propensity DOUBLE").replace("value STRING", "value DOUBLE"))
WINDOW = "THEN row_number() OVER (PARTITION BY dt, reason IS NULL, event_id ORDER BY ts, raw_line)"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/relate_parse_bench"))
    parser.add_argument("--days", type=int, default=4)
    args = parser.parse_args(argv)
    raw = args.workdir / "raw"
    raw_logs(raw, "2026-01-01", args.days, 240_000)
    from pyspark.sql import functions as F

    from pipelines.ingest import materialize
    from plumbing.spark import get_spark

    spark = get_spark("local[2]", "relate-parse-bench", 4)
    days = paths.partitions(raw)
    files = [str(p) for p in sorted(raw.glob("dt=*/*.jsonl.gz"))]
    frames = []
    for d in days:
        start_ms, end_ms = day_bounds_ms(d)
        frames.append(spark.read.text([str(p) for p in sorted((raw / f"dt={d}").glob("*.jsonl.gz"))]).select(
            F.col("value").alias("raw_line"), F.lit(d).alias("dt"),
            F.lit(start_ms).alias("day_start_ms"), F.lit(end_ms).alias("day_end_ms")))
    lines = frames[0]
    for frame in frames[1:]:
        lines = lines.unionByName(frame)
    lines.createOrReplaceTempView("raw_lines")
    sql = (ROOT / "sql" / "parse_day.sql").read_text(encoding="utf-8")
    if WINDOW not in sql:
        raise SystemExit("bench/ingest_parse.py: the dedupe window in sql/parse_day.sql changed; update WINDOW")
    text = spark.read.text(files)
    options = {"mode": "PERMISSIVE", "columnNameOfCorruptRecord": "_corrupt_record"}
    variants = {
        "read gzipped lines": lambda: text,
        "lines + from_json": lambda: text.select(F.from_json("value", SCHEMA, options).alias("j")).select("j.*"),
        "lines + from_json, typed": lambda: text.select(F.from_json(
            "value", TYPED_SCHEMA, {**options, "allowNonNumericNumbers": "false"}).alias("j")).select("j.*"),
        "JSON source, same schema": lambda: spark.read.schema(SCHEMA).options(**options).json(files),
        "lines + bad-type regex": lambda: text.where(F.col("value").rlike('"(ts|position|propensity|value)"\\s*:\\s*"')),
        "parse_day.sql": lambda: spark.sql(sql),
        "parse_day.sql, no dedupe window": lambda: spark.sql(sql.replace(WINDOW, "THEN 1")),
    }
    print(f"{text.count():,} lines in {len(days)} day(s)")
    for round_no in (1, 2):
        for name, build in variants.items():
            started = time.monotonic()
            build().write.format("noop").mode("overwrite").save()
            print(f"round {round_no}  {name:<34} {time.monotonic() - started:6.1f} s", flush=True)
    started = time.monotonic()
    materialize(spark.sql(sql))
    print(f"parse_day.sql materialized (as ingest)   {time.monotonic() - started:6.1f} s")
    spark.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
