"""Ingest: raw JSONL event logs -> curated Parquet tables (Spark; the SQL lives in sql/).

For one run date `ds` it parses the lines of raw partition `ds`, quarantines malformed and
invalid lines with a reason, dedupes by event_id, links click -> impression and
conversion -> click, and writes (dynamic partition overwrite, see docs/data_contract.md):
events, quarantine and ingest_quality for `ds`; labeled_impressions, text_stats and
combo_stats for `ds-W .. ds` (W = attribution_window_days), relabeled from the valid events
of raw partitions `ds-W .. ds` (plus the impressions of `ds-W-1`, so that a click in the
first minutes of `ds-W` is linked exactly as its own run linked it). A run reads nothing
newer than `ds`: it is a pure function of its raw inputs and a rerun is identical.

    python -m pipelines.ingest --ds 2026-01-05 [--master local[2]] [--params params.yaml]
    python -m pipelines.ingest --all          # every raw partition in date order, one session

On a cluster (run from the project root; the SQL files are read next to this module on
the driver, and the job has no Python UDFs, so executors need no Python code):

    zip -qr /tmp/relate_pipelines.zip pipelines
    spark-submit --master yarn --py-files /tmp/relate_pipelines.zip pipelines/ingest.py --all

Foreseeable bad input (bad --ds, missing or empty raw partition, bad params) logs a
clear message and exits 2.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script by spark-submit: make `pipelines` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipelines import paths
from pipelines.atomic import write_json
from pipelines.dates import day_bounds_ms, parse_ds, shift_ds
from pipelines.logs import get_logger
from pipelines.params import ConfigError, load_config, require

log = get_logger(__name__)

SQL_DIR = Path(__file__).resolve().parents[1] / "sql"
QUARANTINE_REASONS = (
    "malformed_json",
    "missing_field",
    "bad_type",
    "unknown_event_type",
    "ts_outside_partition",
    "duplicate_event_id",
    "orphan_click",
    "orphan_conversion",
)
EVENT_COLUMNS = (
    "event_id", "event_type", "ts", "impression_id", "click_id", "user_id", "user_segment",
    "placement", "vertical", "advertiser_id", "product_id", "ad_id", "position", "query",
    "keyword", "text_id", "ad_text", "title_id", "image_id", "highlight_id", "propensity", "value",
)
QUALITY_COLUMNS = ("rows_in", "rows_kept", "rows_quarantined") + tuple(f"q_{r}" for r in QUARANTINE_REASONS)
RAW_PATTERNS = ("*.jsonl.gz", "*.jsonl")
# Sort keys that make each written partition's row order (and so its file) reproducible.
SORT_KEYS = {
    "events": ("ts", "event_id"),
    "quarantine": ("reason", "raw_line"),
    "labeled_impressions": ("ts", "event_id"),
    "text_stats": ("ad_id", "text_id"),
    "combo_stats": ("ad_id", "title_id", "image_id", "highlight_id"),
    "ingest_quality": (),
}


class IngestError(ValueError):
    """Foreseeable bad input (missing or empty raw partition): exit 2 with this message."""


@dataclasses.dataclass
class IngestConfig:
    master: str = "local[*]"
    shuffle_partitions: int = 8
    click_window_minutes: int = 60
    attribution_window_days: int = 3

    def __post_init__(self):
        require(bool(self.master.strip()), "ingest.master", "must be a Spark master URL such as local[*]")
        require(self.shuffle_partitions >= 1, "ingest.shuffle_partitions", "must be >= 1")
        # a click is linked to impressions of its own day and the day before only
        require(1 <= self.click_window_minutes <= 1440, "ingest.click_window_minutes", "must be in 1..1440")
        require(1 <= self.attribution_window_days <= 60, "ingest.attribution_window_days", "must be in 1..60")


def read_sql(name: str) -> str:
    return (SQL_DIR / f"{name}.sql").read_text(encoding="utf-8")


def raw_files(raw_dir: Path, ds: str) -> list[str]:
    """The data files of raw partition ds, sorted; IngestError if it is missing or has none."""
    part = paths.partition(raw_dir, ds)
    if not part.is_dir():
        raise IngestError(f"raw partition for ds={ds} not found: {part}")
    # absolute: the Spark JVM resolves relative paths against its own working directory
    files = sorted({str(f.resolve()) for pattern in RAW_PATTERNS for f in part.glob(pattern) if not f.name.startswith((".", "_"))})
    if not files:
        raise IngestError(f"raw partition for ds={ds} is empty (no {' or '.join(RAW_PATTERNS)} files): {part}")
    return files


def materialize(df):
    """Compute df once and keep it (memory, spilling to disk) with its lineage cut.

    A plain persist() of a parameterised spark.sql() result is not matched by the cache
    manager in later queries (they recompute the whole parse), so checkpoint locally.
    """
    from pyspark import StorageLevel

    return df.localCheckpoint(eager=True, storageLevel=StorageLevel.MEMORY_AND_DISK)


class IngestJob:
    """Runs ingest for one ds at a time in one Spark session.

    Parsed raw partitions are cached and reused by the next runs' relabel windows (--all):
    a partition's parse depends on that partition alone, so reuse gives the same rows as
    an independent run.
    """

    def __init__(self, spark, cfg: IngestConfig, raw_dir: Path = paths.RAW_EVENTS, curated_dir: Path = paths.CURATED):
        self.spark, self.cfg = spark, cfg
        self.raw_dir, self.curated_dir = Path(raw_dir), Path(curated_dir)
        self.parsed: dict[str, object] = {}
        self.sql = {name: read_sql(name) for name in
                    ("parse_day", "link_events", "labeled_impressions", "text_stats", "combo_stats")}

    # -- parsing ---------------------------------------------------------------------------
    def parse_day(self, ds: str):
        """All lines of raw partition ds with typed fields and their row-level reason (cached)."""
        if ds not in self.parsed:
            files = raw_files(self.raw_dir, ds)
            lines = self.spark.read.text(files).withColumnRenamed("value", "raw_line")
            # gzip files are not splittable: spread lines over the cores before parsing
            lines.repartition(self.cfg.shuffle_partitions).createOrReplaceTempView("raw_lines")
            start_ms, end_ms = day_bounds_ms(ds)
            parsed = self.spark.sql(
                self.sql["parse_day"], args={"ds": ds, "day_start_ms": start_ms, "day_end_ms": end_ms}
            )
            self.parsed[ds] = materialize(parsed)
        return self.parsed[ds]

    def forget_before(self, ds: str) -> None:
        """Drop parsed partitions no later run needs (their checkpoint blocks are then unreferenced)."""
        for day in [d for d in self.parsed if d < ds]:
            self.parsed.pop(day)

    def window_days(self, ds: str) -> list[str]:
        """Raw partitions a run for ds reads (ds-W-1 .. ds), those that exist; ds must."""
        w = self.cfg.attribution_window_days
        days = [shift_ds(ds, -k) for k in range(w + 1, 0, -1)]
        return [d for d in days if paths.partition(self.raw_dir, d).is_dir()] + [ds]

    # -- one run ---------------------------------------------------------------------------
    def run(self, ds: str) -> dict[str, int]:
        """Ingest ds; return its ingest_quality row as a dict."""
        from pyspark.sql import functions as F

        parse_ds(ds)
        started = time.monotonic()
        w = self.cfg.attribution_window_days
        first_label_dt = shift_ds(ds, -w)
        day = self.parse_day(ds)
        rows_in = day.count()
        if rows_in == 0:
            raise IngestError(f"raw partition for ds={ds} has no lines: {paths.partition(self.raw_dir, ds)}")

        # impressions of ds-W-1 only judge clicks of ds-W; its clicks/conversions never matter here
        window = None
        for d in self.window_days(ds):
            valid = self.parse_day(d).where("reason IS NULL").drop("reason")
            if d != ds:  # raw lines are only needed to quarantine ds's orphans
                valid = valid.withColumn("raw_line", F.lit(None).cast("string"))
            if d < first_label_dt:
                valid = valid.where("event_type = 'impression'")
            window = valid if window is None else window.unionByName(valid)
        window.createOrReplaceTempView("window_events")
        params = {
            "click_window_ms": self.cfg.click_window_minutes * 60_000,
            "attribution_window_ms": w * 86_400_000,
        }
        linked = materialize(self.spark.sql(self.sql["link_events"], args=params))
        linked.createOrReplaceTempView("linked_events")

        today = linked.where(F.col("dt") == ds)
        events = today.where("link_reason IS NULL").select(*EVENT_COLUMNS, "dt")
        quarantine = (
            day.where("reason IS NOT NULL").select("raw_line", "reason", "event_id", "dt")
            .unionByName(today.where("link_reason IS NOT NULL")
                         .selectExpr("raw_line", "link_reason AS reason", "event_id", "dt"))
        )
        labeled = materialize(self.spark.sql(self.sql["labeled_impressions"], args={
            **params, "first_dt": first_label_dt, "labels_as_of": ds, "attribution_window_days": w,
        }))
        labeled.createOrReplaceTempView("labeled_window")
        label_days = sorted(d for d in self.window_days(ds) if d >= first_label_dt)

        rows_kept = sum(self.write("events", events, [ds]).values())
        by_reason = {r: n for r, n in quarantine.groupBy("reason").count().collect()}
        rows_quarantined = sum(self.write("quarantine", quarantine, [ds]).values())
        if rows_kept + rows_quarantined != rows_in:  # an internal bug, never bad input
            raise RuntimeError(f"ds={ds}: rows_in {rows_in} != kept {rows_kept} + quarantined {rows_quarantined}")
        quality = {"rows_in": rows_in, "rows_kept": rows_kept, "rows_quarantined": rows_quarantined}
        quality.update({f"q_{r}": by_reason.get(r, 0) for r in QUARANTINE_REASONS})
        self.write("ingest_quality", self.quality_frame(ds, quality), [ds])
        labeled_rows = sum(self.write("labeled_impressions", labeled, label_days).values())
        self.write("text_stats", self.spark.sql(self.sql["text_stats"]), label_days)
        self.write("combo_stats", self.spark.sql(self.sql["combo_stats"]), label_days)

        self.forget_before(shift_ds(ds, -w))
        log.info(
            "ds=%s: %d lines in, %d kept, %d quarantined %s; %d impressions relabeled for %s..%s; %.1fs",
            ds, rows_in, rows_kept, rows_quarantined,
            {r: n for r, n in sorted(by_reason.items())}, labeled_rows, label_days[0], ds,
            time.monotonic() - started,
        )
        return quality

    def quality_frame(self, ds: str, quality: dict[str, int]):
        schema = ", ".join(f"{c} BIGINT" for c in QUALITY_COLUMNS) + ", dt STRING"
        return self.spark.createDataFrame([tuple(quality[c] for c in QUALITY_COLUMNS) + (ds,)], schema)

    def write(self, table: str, df, owned_days: list[str]) -> dict[str, int]:
        """Replace partitions `owned_days` of a curated table with df; return rows per dt.

        Dynamic overwrite replaces only the partitions df has rows for, so an owned
        partition that is now empty is deleted explicitly (a rerun must not keep stale rows).
        """
        from pyspark import StorageLevel

        df = df.repartition("dt").sortWithinPartitions("dt", *SORT_KEYS[table]).persist(StorageLevel.MEMORY_AND_DISK)
        counts = {dt: n for dt, n in df.groupBy("dt").count().collect()}
        if set(counts) - set(owned_days):  # an internal bug: never write a partition we do not own
            raise RuntimeError(f"{table}: rows for partitions {sorted(set(counts) - set(owned_days))} not owned by this run")
        table_dir = self.curated_dir / paths.curated(table).name
        if counts:
            df.write.mode("overwrite").partitionBy("dt").parquet(str(table_dir.resolve()))
        for d in owned_days:
            if d not in counts:
                self.drop_partition(paths.partition(table_dir, d))
        df.unpersist()
        return counts

    def drop_partition(self, part: Path) -> None:
        jvm = self.spark.sparkContext._jvm
        hpath = jvm.org.apache.hadoop.fs.Path(str(part.resolve()) if not str(part).startswith(("hdfs:", "s3")) else str(part))
        fs = hpath.getFileSystem(self.spark.sparkContext._jsc.hadoopConfiguration())
        if fs.exists(hpath):
            fs.delete(hpath, True)


def quality_metrics(spark, curated_dir: Path = paths.CURATED) -> dict:
    """Totals over every partition in ingest_quality, by reason, and per day."""
    table = Path(curated_dir) / "ingest_quality"
    rows = [r.asDict() for r in spark.read.parquet(str(table.resolve())).collect()]
    for r in rows:  # Spark infers the partition column as a date when reading back
        r["dt"] = str(r["dt"])
    rows.sort(key=lambda r: r["dt"])
    totals = {c: sum(int(r[c]) for r in rows) for c in QUALITY_COLUMNS}
    return {
        "rows_in": totals["rows_in"],
        "rows_kept": totals["rows_kept"],
        "rows_quarantined": totals["rows_quarantined"],
        "quarantine_rate": totals["rows_quarantined"] / max(totals["rows_in"], 1),
        "quarantined_by_reason": {r: totals[f"q_{r}"] for r in QUARANTINE_REASONS},
        "days": len(rows),
        "per_day": {r["dt"]: {c: int(r[c]) for c in QUALITY_COLUMNS} for r in rows},
    }


def run_days(spark, cfg: IngestConfig, days: list[str], metrics_path: Path | None = paths.METRICS / "ingest.json",
             raw_dir: Path = paths.RAW_EVENTS, curated_dir: Path = paths.CURATED) -> dict:
    """Ingest `days` in order in one session; write and return the metrics."""
    job = IngestJob(spark, cfg, raw_dir, curated_dir)
    for ds in days:
        raw_files(job.raw_dir, ds)  # fail before any work when a named partition is missing
    started = time.monotonic()
    for ds in days:
        job.run(ds)
    metrics = quality_metrics(spark, curated_dir)
    if metrics_path is not None:
        write_json(metrics_path, metrics)
    log.info("ingested %d day(s) in %.1fs; totals over %d partitions: %d in, %d kept, %d quarantined",
             len(days), time.monotonic() - started, metrics["days"], metrics["rows_in"],
             metrics["rows_kept"], metrics["rows_quarantined"])
    return metrics


def _ds_arg(value: str) -> str:
    try:
        parse_ds(value)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    return value


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="pipelines.ingest", description=__doc__.splitlines()[0])
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--ds", type=_ds_arg, help="run date YYYY-MM-DD (one raw partition)")
    which.add_argument("--all", action="store_true", help="every raw partition in date order, one Spark session")
    parser.add_argument("--master", help="Spark master; overrides params ingest.master")
    parser.add_argument("--params", help="params file (default: $RELATE_PARAMS or params.yaml)")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)  # argparse itself exits 2 with a usage message on bad arguments
    try:
        cfg = load_config(IngestConfig, "ingest", args.params)
        if args.master:
            cfg = dataclasses.replace(cfg, master=args.master)
        days = paths.partitions(paths.RAW_EVENTS) if args.all else [args.ds]
        if not days:
            raise IngestError(f"no raw partitions under {paths.RAW_EVENTS} (run the simulator first)")
        for ds in days:
            raw_files(paths.RAW_EVENTS, ds)
    except (ConfigError, ValueError) as err:
        log.error("%s", err)
        raise SystemExit(2) from None

    from pyspark.sql import SparkSession

    from pipelines.spark import get_spark

    owns_session = SparkSession.getActiveSession() is None
    spark = get_spark(cfg.master, "relate-ingest", cfg.shuffle_partitions)
    try:
        run_days(spark, cfg, days)
    except (ConfigError, ValueError) as err:  # e.g. a partition found empty once read
        log.error("%s", err)
        raise SystemExit(2) from None
    finally:
        if owns_session:
            spark.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
