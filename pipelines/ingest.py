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
    python -m pipelines.ingest --all          # every raw partition, one pass

`--all` writes the final state that the daily runs for every raw partition, in date
order, would leave, but in one pass: each table is written once, each partition labeled
as of the last daily run that would relabel it (`labels_as_of` = the latest run in
dt .. dt+W), instead of W+1 relabels per day.

On a cluster (run from the project root; the SQL files are read next to this module on
the driver, and the job has no Python UDFs, so executors need no Python code); spark-submit's
--master decides, params' ingest.master is not used then:

    zip -qr /tmp/relate_pipelines.zip pipelines plumbing
    spark-submit --master spark://host:7077 --py-files /tmp/relate_pipelines.zip pipelines/ingest.py --all

Through Spark Connect (`ingest.master: sc://host:15002`, `--master sc://host:15002`, or
SPARK_REMOTE=sc://host:15002): the same job, run by the Connect server's Spark. Every engine
must see the raw and curated paths as this driver does (one machine, or a shared file system):
the driver lists raw files and deletes emptied curated partitions itself.

Foreseeable bad input (bad --ds, missing or empty raw partition, a raw file that is
unreadable or not named as the contract says, bad params) logs a one-line message and exits
2 (plumbing.cli); anything else keeps its traceback. Lines that break the contract's bounds
(pipelines/schema.py) are quarantined with a reason.
"""
from __future__ import annotations

import dataclasses
import gzip
import re
import sys
import time
import zlib
from pathlib import Path

if __package__ in (None, ""):  # run as a script by spark-submit: make `pipelines` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from plumbing import paths
from plumbing.atomic import remove_tree, write_json
from plumbing.cli import StageContext, run_stage
from plumbing.config import require, require_spark_master
from plumbing.dates import day_bounds_ms, parse_ds, shift_ds
from plumbing.errors import ConfigError, DataError
from plumbing.logs import get_logger
from plumbing.spark import task_slots
from pipelines.schema import (DATA_FILE_PREFIX, DATA_FILE_SUFFIXES, IGNORED_FILE_PREFIXES, QUARANTINE_REASONS,
                              RAW_EVENT_FIELDS, sql_bounds)

log = get_logger(__name__)

SQL_DIR = Path(__file__).resolve().parents[1] / "sql"
EVENT_COLUMNS = RAW_EVENT_FIELDS
QUALITY_COLUMNS = (("rows_in", "rows_kept", "rows_quarantined") + tuple(f"q_{r}" for r in QUARANTINE_REASONS)
                   + ("files_read", "files_ignored"))
URI_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]+:")  # hdfs:, s3a:, file:... (a Windows drive is one letter)
DATA_FILE_NAMES = " or ".join(f"{DATA_FILE_PREFIX}*{suffix}" for suffix in DATA_FILE_SUFFIXES)
# Sort keys that make each written partition's row order (and so its file) reproducible.
SORT_KEYS = {
    "events": ("ts", "event_id"),
    "quarantine": ("reason", "raw_line"),
    "labeled_impressions": ("ts", "event_id"),
    "text_stats": ("ad_id", "text_id"),
    "combo_stats": ("ad_id", "title_id", "image_id", "highlight_id"),
    "ingest_quality": (),
}


class IngestError(DataError):
    """Foreseeable bad input (missing or empty raw partition): exit 2 with this message."""


@dataclasses.dataclass
class IngestConfig:
    master: str
    shuffle_partitions: int
    click_window_minutes: int
    attribution_window_days: int

    def __post_init__(self):
        require_spark_master("ingest.master", self.master)
        require(1 <= self.shuffle_partitions <= 100_000, "ingest.shuffle_partitions", "must be in 1..100000")
        # a click is linked to impressions of its own day and the day before only
        require(1 <= self.click_window_minutes <= 1440, "ingest.click_window_minutes", "must be in 1..1440")
        require(1 <= self.attribution_window_days <= 60, "ingest.attribution_window_days", "must be in 1..60")


def read_sql(name: str) -> str:
    return (SQL_DIR / f"{name}.sql").read_text(encoding="utf-8")


def raw_files(raw_dir: Path, ds: str) -> list[str]:
    """The data files of raw partition ds, sorted; IngestError if it is missing or has none."""
    return partition_files(raw_dir, ds)[0]


def partition_files(raw_dir: Path, ds: str) -> tuple[list[str], list[str]]:
    """(the data files of raw partition ds, sorted; the names of the hidden and marker files it holds).

    Every entry is accounted for: data files (DATA_FILE_NAMES) are read, names starting with
    IGNORED_FILE_PREFIXES are not, and any other entry refuses the partition (IngestError
    naming it), as does a partition that is missing or has no data file.
    """
    part = paths.partition(raw_dir, ds)
    if not part.is_dir():
        raise IngestError(f"raw partition for ds={ds} not found: {part}")
    files, ignored, foreign = [], [], []
    for entry in sorted(part.iterdir()):
        if entry.name.startswith(IGNORED_FILE_PREFIXES):
            ignored.append(entry.name)
        elif entry.name.startswith(DATA_FILE_PREFIX) and entry.name.endswith(DATA_FILE_SUFFIXES) and entry.is_file():
            files.append(str(entry.resolve()))  # absolute: the Spark JVM resolves paths against its own cwd
        else:
            foreign.append(entry.name)
    if foreign:
        raise IngestError(f"raw partition for ds={ds} holds {', '.join(map(repr, foreign))}, not named {DATA_FILE_NAMES}"
                          f" (nor hidden): move it out of {part}")
    if not files:
        raise IngestError(f"raw partition for ds={ds} is empty (no {DATA_FILE_NAMES} files): {part}")
    return files, ignored


def check_readable(file: str) -> None:
    """IngestError naming `file` unless it is readable to its end (gzip: decompressed, not kept)."""
    try:
        with (gzip.open(file, "rb") if file.endswith(".gz") else open(file, "rb")) as fh:
            while fh.read(1 << 20):
                pass
        if file.endswith(".gz") and Path(file).stat().st_size == 0:
            raise EOFError("an empty file, not gzip")
    except (OSError, EOFError, zlib.error) as err:
        raise IngestError(f"raw file {file} is unreadable ({type(err).__name__}: {err}); "
                          f"replace it with a complete delivery or move it out of the partition") from None


def materialize(df):
    """Compute df once and keep it (memory, spilling to disk) with its lineage cut.

    A persist()ed frame keeps its whole plan, and the optimizer then chokes on the link
    and label queries built over the parse; a local checkpoint is a plain leaf. Its rows
    are kept as objects (the _DESER level): from Python, MEMORY_AND_DISK is a serialized
    level, which stores every row with the Java serializer, slower than computing it.
    Spark Connect (4.x) takes the same call.
    """
    from pyspark import StorageLevel

    return df.localCheckpoint(eager=True, storageLevel=StorageLevel.MEMORY_AND_DISK_DESER)


def last_relabels(runs: list[str], read: list[str], window_days: int) -> dict[str, str]:
    """labels_as_of per partition of `read` that the daily `runs` relabel: the last run
    that relabels it (a run for ds relabels ds-W .. ds), so the latest run in d .. d+W."""
    labels_as_of = {}
    for d in read:
        relabeling = [ds for ds in sorted(runs) if d <= ds <= shift_ds(d, window_days)]
        if relabeling:
            labels_as_of[d] = relabeling[-1]
    return labels_as_of


class IngestJob:
    """Ingest in one Spark session: `run(ds)` is the daily run (the contract); `run_all(days)`
    gives in one pass the final state of running `days` in order, day by day.

    Both go through `ingest()` and the same SQL; they differ only in what they read, own
    and label: a daily run reads ds-W-1 .. ds, owns events/quarantine/quality of ds and
    labels ds-W .. ds as of ds; run_all reads the union of those windows, owns every day
    and labels each partition as of the last run that relabels it (link_events.sql says
    why one link pass over a longer window gives every event its own run's link).
    """

    def __init__(self, spark, cfg: IngestConfig, raw_dir: Path = paths.RAW_EVENTS, curated_dir: Path = paths.CURATED):
        self.spark, self.cfg = spark, cfg
        self.raw_dir, self.curated_dir = Path(raw_dir), Path(curated_dir)
        self.files: dict[str, tuple[int, int]] = {}  # per parsed partition: (files read, files ignored)
        self.sql = {name: read_sql(name) for name in
                    ("parse_day", "link_events", "line_outcomes", "labeled_impressions", "text_stats", "combo_stats")}

    # -- parsing ---------------------------------------------------------------------------
    def parse(self, days: list[str]):
        """All lines of raw partitions `days` with typed fields, dt and row-level reason (materialized)."""
        from pyspark.sql import functions as F

        files, frames = 0, []
        for d in days:
            day_files, ignored = partition_files(self.raw_dir, d)
            for file in day_files:  # one clear refusal naming the file, before Spark fails on it
                check_readable(file)
            if ignored:
                log.warning("ds=%s: not read (hidden or marker files): %s", d, ", ".join(ignored))
            self.files[d] = (len(day_files), len(ignored))
            files += len(day_files)
            start_ms, end_ms = day_bounds_ms(d)
            frames.append(self.spark.read.text(day_files).select(
                F.col("value").alias("raw_line"), F.lit(d).alias("dt"),
                F.lit(start_ms).alias("day_start_ms"), F.lit(end_ms).alias("day_end_ms")))
        lines = frames[0]
        for frame in frames[1:]:
            lines = lines.unionByName(frame)
        # gzip files are not splittable: with fewer files than cores, spread lines before parsing
        if files < task_slots(self.spark, self.cfg.shuffle_partitions):
            lines = lines.repartition(self.cfg.shuffle_partitions)
        lines.createOrReplaceTempView("raw_lines")
        return materialize(self.spark.sql(self.sql["parse_day"], args=sql_bounds()))

    def window_days(self, ds: str) -> list[str]:
        """Raw partitions a run for ds reads (ds-W-1 .. ds), those that exist; ds must."""
        w = self.cfg.attribution_window_days
        days = [shift_ds(ds, -k) for k in range(w + 1, 0, -1)]
        return [d for d in days if paths.partition(self.raw_dir, d).is_dir()] + [ds]

    # -- runs ------------------------------------------------------------------------------
    def run(self, ds: str) -> dict[str, int]:
        """The daily run for ds; return its ingest_quality row as a dict."""
        return self.run_all([ds])[ds]

    def run_all(self, days: list[str]) -> dict[str, dict[str, int]]:
        """The final state of the daily runs for `days` in date order, in one pass.

        Reads the union of their windows; partition d is labeled as of the last run that
        relabels it (the latest run in d .. d+W), from what that run sees. Returns the
        ingest_quality rows per day. For one day this is exactly the daily run.
        """
        for ds in days:
            parse_ds(ds)
        days = sorted(set(days))
        read = sorted({d for ds in days for d in self.window_days(ds)})
        return self.ingest(days, read, last_relabels(days, read, self.cfg.attribution_window_days))

    def ingest(self, owned: list[str], read: list[str], labels_as_of: dict[str, str]) -> dict[str, dict[str, int]]:
        """Parse `read`; write events/quarantine/quality of `owned` and the labels of each
        partition in `labels_as_of` as of its value. Return the quality rows of `owned`."""
        from pyspark.sql import functions as F

        started = time.monotonic()
        parsed = self.parse(read)
        log.info("parsed %d raw partition(s) %s..%s (%.1fs)", len(read), read[0], read[-1], time.monotonic() - started)
        linked_actions, linked = self.link(parsed, owned, labels_as_of)
        owned_lines = parsed.where(F.col("dt").isin(owned))
        owned_linked = linked.where(F.col("dt").isin(owned))
        quality = self.quality_rows(owned_lines, owned_linked, owned)
        log.info("linked clicks and conversions (%.1fs)", time.monotonic() - started)
        self.write_owned(owned_lines, owned_linked, owned, quality)
        labeled, placements = self.relabel(labels_as_of)

        for ds in owned:
            q = quality[ds]
            log.info("ds=%s: %d lines in, %d kept, %d quarantined %s", ds, q["rows_in"], q["rows_kept"],
                     q["rows_quarantined"], {r: q[f"q_{r}"] for r in QUARANTINE_REASONS if q[f"q_{r}"]})
        label_days = sorted(labels_as_of)
        log.info("wrote %d owned partition(s) and %d impressions relabeled in %s..%s; %.1fs", len(owned),
                 sum(placements.values()), label_days[0], label_days[-1], time.monotonic() - started)
        parsed.unpersist()
        linked_actions.unpersist()
        labeled.unpersist()
        return quality

    def sql_args(self) -> dict[str, int]:
        """The windows the link and label SQL take, in milliseconds."""
        return {
            "click_window_ms": self.cfg.click_window_minutes * 60_000,
            "attribution_window_ms": self.cfg.attribution_window_days * 86_400_000,
        }

    def link(self, parsed, owned: list[str], labels_as_of: dict[str, str]):
        """(linked clicks and conversions, materialized; every window event with its link_reason).

        Registers `window_events` and `linked_events` for the SQL that follows.
        """
        from pyspark.sql import functions as F

        # A day read only for its impressions (a daily run's ds-W-1) judges clicks of the
        # next day; its own clicks/conversions never matter. Raw lines are needed only to
        # quarantine the owned days' orphans.
        window = (
            parsed.where("reason IS NULL").drop("reason")
            .where(F.col("dt").isin(list(labels_as_of)) | (F.col("event_type") == "impression"))
            .withColumn("raw_line", F.when(F.col("dt").isin(owned), F.col("raw_line")))
        )
        window.createOrReplaceTempView("window_events")
        # Only clicks and conversions are linked (a few % of the rows) and kept; impressions,
        # never orphans, come straight from the materialized parse with link_reason NULL.
        # The linked side is small, so it is kept in few partitions (shuffle_partitions/16):
        # every later scan of `linked` then runs few tasks more than the parse's (measured:
        # 6 days, local[2], 4 shuffle partitions: ~9 s less than keeping its 6).
        linked_actions = materialize(self.spark.sql(self.sql["link_events"], args=self.sql_args())
                                     .coalesce(max(1, self.cfg.shuffle_partitions // 16)))
        linked = (
            window.where(F.col("event_type") == "impression")
            .withColumn("link_reason", F.lit(None).cast("string"))
            .unionByName(linked_actions)
        )
        linked.createOrReplaceTempView("linked_events")
        return linked_actions, linked

    def write_owned(self, owned_lines, owned_linked, owned: list[str], quality: dict[str, dict[str, int]]) -> None:
        """Write events, quarantine and ingest_quality of the owned days."""
        events = owned_linked.where("link_reason IS NULL").select(*EVENT_COLUMNS, "dt")
        quarantine = (
            owned_lines.where("reason IS NOT NULL").select("raw_line", "reason", "event_id", "dt")
            .unionByName(owned_linked.where("link_reason IS NOT NULL")
                         .selectExpr("raw_line", "link_reason AS reason", "event_id", "dt"))
        )
        self.write("events", events, owned, {d for d in owned if quality[d]["rows_kept"]})
        self.write("quarantine", quarantine, owned, {d for d in owned if quality[d]["rows_quarantined"]})
        self.write("ingest_quality", quality_frame(self.spark, quality, QUALITY_COLUMNS), owned, set(owned))

    def relabel(self, labels_as_of: dict[str, str]):
        """Label each partition of `labels_as_of` as of its run; write labeled_impressions,
        text_stats and combo_stats. Return (the labeled frame, materialized; rows per (dt, placement))."""
        self.spark.createDataFrame(sorted(labels_as_of.items()), "dt STRING, labels_as_of STRING") \
            .createOrReplaceTempView("label_days")
        labeled = materialize(self.spark.sql(self.sql["labeled_impressions"], args={
            **self.sql_args(), "attribution_window_days": self.cfg.attribution_window_days,
        }))
        labeled.createOrReplaceTempView("labeled_window")
        placements = {(dt, placement): n for dt, placement, n in labeled.groupBy("dt", "placement").count().collect()}
        label_days = sorted(labels_as_of)
        self.write("labeled_impressions", labeled, label_days, {dt for dt, _ in placements})
        self.write("text_stats", self.spark.sql(self.sql["text_stats"]), label_days,
                   {dt for dt, placement in placements if placement == "search"})
        self.write("combo_stats", self.spark.sql(self.sql["combo_stats"]), label_days,
                   {dt for dt, placement in placements if placement == "feed"})
        return labeled, placements

    def quality_rows(self, owned_lines, owned_linked, owned: list[str]) -> dict[str, dict[str, int]]:
        """ingest_quality row per owned day; IngestError for a day with no lines."""
        owned_lines.createOrReplaceTempView("parsed_lines")
        owned_linked.createOrReplaceTempView("linked_lines")
        counts: dict[str, dict[str, int]] = {d: {} for d in owned}
        for dt, outcome, n in self.spark.sql(self.sql["line_outcomes"]).collect():
            counts[dt][outcome] = n
        quality = {}
        for ds in owned:
            by_outcome = counts[ds]
            rows_in = by_outcome.pop("in", 0)
            if rows_in == 0:
                raise IngestError(f"raw partition for ds={ds} has no lines: {paths.partition(self.raw_dir, ds)}")
            rows_kept = by_outcome.pop("kept", 0)
            if set(by_outcome) - set(QUARANTINE_REASONS):  # an internal bug, never bad input
                raise RuntimeError(f"ds={ds}: unknown quarantine reasons {sorted(set(by_outcome) - set(QUARANTINE_REASONS))}")
            rows_quarantined = sum(by_outcome.values())
            if rows_kept + rows_quarantined != rows_in:  # an internal bug, never bad input
                raise RuntimeError(f"ds={ds}: rows_in {rows_in} != kept {rows_kept} + quarantined {rows_quarantined}")
            quality[ds] = {"rows_in": rows_in, "rows_kept": rows_kept, "rows_quarantined": rows_quarantined}
            quality[ds].update({f"q_{r}": by_outcome.get(r, 0) for r in QUARANTINE_REASONS})
            quality[ds]["files_read"], quality[ds]["files_ignored"] = self.files[ds]
        return quality

    def write(self, table: str, df, owned_days: list[str], nonempty_days: set[str]) -> None:
        """Replace partitions `owned_days` of a curated table with df (see write_partitions)."""
        write_partitions(self.spark, self.curated_dir, table, df, owned_days, nonempty_days)


def quality_frame(spark, quality: dict[str, dict[str, int]], columns: tuple[str, ...]):
    """ingest_quality rows ({dt: counts}) as a frame: the count `columns` as BIGINT, then dt."""
    schema = ", ".join(f"{c} BIGINT" for c in columns) + ", dt STRING"
    rows = [tuple(q[c] for c in columns) + (ds,) for ds, q in sorted(quality.items())]
    return spark.createDataFrame(rows, schema)


def write_partitions(spark, curated_dir: Path, table: str, df, owned_days: list[str], nonempty_days: set[str]) -> None:
    """Replace partitions `owned_days` of a curated table with df (rows of `nonempty_days` only).

    Dynamic overwrite replaces only the partitions df has rows for, so an owned
    partition that is now empty is deleted explicitly (a rerun must not keep stale rows).
    The caller knows which days have rows (from counts it needs anyway), so df is
    computed once, by the write itself.
    """
    if nonempty_days - set(owned_days):  # an internal bug: never write a partition we do not own
        raise RuntimeError(f"{table}: rows for partitions {sorted(nonempty_days - set(owned_days))} not owned by this run")
    table_dir = Path(curated_dir) / paths.curated(table).name
    if nonempty_days:
        # one file per partition, rows in a fixed order: reproducible files (measured: writing
        # each task's rows without this shuffle saved no CPU and made 4-8 files per dt)
        (df.repartition("dt").sortWithinPartitions("dt", *SORT_KEYS[table])
         .write.mode("overwrite").partitionBy("dt").parquet(str(table_dir.resolve())))
    for d in owned_days:
        if d not in nonempty_days:
            drop_partition(paths.partition(table_dir, d))


def drop_partition(part: Path) -> None:
    """Delete a partition this run owns but has no rows for, from the driver, on every engine
    (classic, cluster, Spark Connect: no JVM call). Removed atomically: renamed to a hidden name
    (which readers skip), then deleted. A partition not on a file system this process mounts
    is refused rather than left stale."""
    if URI_SCHEME.match(str(part)):
        raise ConfigError(f"cannot delete the emptied partition {part}: curated tables must be on a file "
                          "system the ingest driver mounts (a local or network path, not a URI)")
    remove_tree(part)


def quality_metrics(spark, curated_dir: Path = paths.CURATED) -> dict:
    """Totals over every partition in ingest_quality, by reason, and per day."""
    table = Path(curated_dir) / "ingest_quality"
    rows = [r.asDict() for r in spark.read.parquet(str(table.resolve())).collect()]
    for r in rows:
        r["dt"] = str(r["dt"])  # Spark infers the partition column as a date when reading back
        # a partition written before a count column existed (or by ingest_reports) lacks it: 0
        r.update({c: int(r.get(c) or 0) for c in QUALITY_COLUMNS})
    rows.sort(key=lambda r: r["dt"])
    totals = {c: sum(r[c] for r in rows) for c in QUALITY_COLUMNS}
    return {
        "rows_in": totals["rows_in"],
        "rows_kept": totals["rows_kept"],
        "rows_quarantined": totals["rows_quarantined"],
        "quarantine_rate": totals["rows_quarantined"] / max(totals["rows_in"], 1),
        "quarantined_by_reason": {r: totals[f"q_{r}"] for r in QUARANTINE_REASONS},
        "days": len(rows),
        "per_day": {r["dt"]: {c: r[c] for c in QUALITY_COLUMNS} for r in rows},
    }


def run_days(spark, cfg: IngestConfig, days: list[str], metrics_path: Path | None = paths.METRICS / "ingest.json",
             raw_dir: Path = paths.RAW_EVENTS, curated_dir: Path = paths.CURATED) -> dict:
    """Ingest `days` (the final state of their daily runs in date order, in one pass); write and return the metrics."""
    job = IngestJob(spark, cfg, raw_dir, curated_dir)
    for ds in days:
        raw_files(job.raw_dir, ds)  # fail before any work when a named partition is missing
    started = time.monotonic()
    job.run_all(days)
    metrics = quality_metrics(spark, curated_dir)
    if metrics_path is not None:
        write_json(metrics_path, metrics)
    log.info("ingested %d day(s) in %.1fs; totals over %d partitions: %d in, %d kept, %d quarantined",
             len(days), time.monotonic() - started, metrics["days"], metrics["rows_in"],
             metrics["rows_kept"], metrics["rows_quarantined"])
    return metrics


def main(argv=None) -> int:
    return run_stage("ingest", __doc__, run, argv, ds="partition", add_arguments=add_arguments)


def add_arguments(parser) -> None:
    parser.add_argument("--all", action="store_true", help="every raw partition in date order, one Spark session")
    parser.add_argument("--master", help="Spark master; overrides params ingest.master")


def days_to_process(ctx: StageContext) -> list[str]:
    """[--ds], or every raw partition with --all; ConfigError unless exactly one of them is given."""
    if (ctx.ds is None) == (not ctx.args.all):
        raise ConfigError("give one of --ds YYYY-MM-DD or --all")
    if ctx.ds is None:
        return paths.partitions(paths.RAW_EVENTS)
    parse_ds(ctx.ds)
    return [ctx.ds]


def run(ctx: StageContext) -> None:
    """Ingest --ds (or every raw partition with --all) in one Spark session."""
    days = days_to_process(ctx)
    cfg = ctx.config(IngestConfig)
    if ctx.args.master:
        cfg = dataclasses.replace(cfg, master=ctx.args.master)
    if not days:
        raise IngestError(f"no raw partitions under {paths.RAW_EVENTS} (run the simulator first)")
    for ds in days:
        raw_files(paths.RAW_EVENTS, ds)  # fail before Spark starts when a partition is missing or empty

    from plumbing.spark import stage_session

    with stage_session(cfg.master, "relate-ingest", cfg.shuffle_partitions) as spark:
        run_days(spark, cfg, days)


if __name__ == "__main__":
    sys.exit(main())
