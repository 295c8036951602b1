"""Ingest for aggregated reports: raw CSV reports -> curated Parquet tables (Spark; SQL in sql/).

The event ingest (pipelines.ingest) reads one line per impression, click or conversion.
A report source delivers counts already aggregated per unit (the Upworthy Research
Archive: one row per package, i.e. per arm of an A/B test, with impressions and clicks),
which would be tens of millions of lines as events. This job takes such a report through
the same machinery: an explicit schema (every column read as a string, then typed in
SQL so that an absent field is told apart from a bad one), a quarantine table with one
reason per bad row, rows_in = rows_kept + rows_quarantined (checked), dedupe, and the
event ingest's partition writer (dynamic partition overwrite, stale partitions dropped,
sorted reproducible files). It writes combo_stats and text_stats partitioned by the
report's own date (the Monday of the test week), and quarantine and ingest_quality in
the run's partition (the latest week of the report).

    python -m pipelines.ingest_reports --source upworthy [--master local[2]] [--params params.yaml]

The raw report files are what the source published, landed as is under
`data/raw/<source>/` (relate_real.upworthy lands the archive's CSV there). The job owns
every partition of its curated tables (it reads the whole delivery), so partitions left by
an earlier delivery that no longer have rows are dropped. Foreseeable bad input (no
report file, a file lacking a required column, bad params) logs one line and exits 2.
"""
from __future__ import annotations

import csv
import dataclasses
import gzip
import sys
import time
from pathlib import Path

from plumbing import paths
from plumbing.cli import StageContext, run_stage
from plumbing.logs import get_logger
from plumbing.spark import task_slots
from pipelines.ingest import IngestConfig, IngestError, materialize, quality_frame, read_sql, write_partitions
from pipelines.schema import QUARANTINE_REASONS

log = get_logger(__name__)

REPORT_PATTERNS = ("*.csv", "*.csv.gz")
# reasons of a report beyond the event contract's (ingest_quality carries one q_ column per reason)
REPORT_REASONS = QUARANTINE_REASONS + ("invalid_counts", "duplicate_row")
QUALITY_COLUMNS = ("rows_in", "rows_kept", "rows_quarantined") + tuple(f"q_{r}" for r in REPORT_REASONS)
CORRUPT_COLUMN = "_corrupt_record"


@dataclasses.dataclass(frozen=True)
class ReportSource:
    """A report format: the columns it must have and its SQL (sql/<name>_*.sql)."""

    name: str
    required_columns: tuple[str, ...]
    tables: tuple[str, ...] = ("combo_stats", "text_stats")  # curated tables built from the kept rows


SOURCES = {
    "upworthy": ReportSource("upworthy", ("clickability_test_id", "test_week", "headline", "eyecatcher_id",
                                          "excerpt", "lede", "impressions", "clicks")),
}


def raw_dir(source: str) -> Path:
    return paths.DATA / "raw" / source


def report_files(directory: Path) -> list[str]:
    """The report files landed under `directory`, sorted (absolute, for the JVM); IngestError if none."""
    directory = Path(directory)
    files = sorted({str(f.resolve()) for pattern in REPORT_PATTERNS for f in directory.glob(pattern)
                    if not f.name.startswith((".", "_"))})
    if not files:
        raise IngestError(f"no report files ({' or '.join(REPORT_PATTERNS)}) under {directory}")
    return files


def read_header(file: str) -> list[str]:
    """A CSV report's column names (its first record); IngestError if it has none."""
    opener = gzip.open if file.endswith(".gz") else open
    try:
        with opener(file, "rt", encoding="utf-8", newline="") as handle:
            header = next(csv.reader(handle), None)
    except (OSError, UnicodeDecodeError, csv.Error, EOFError) as err:
        raise IngestError(f"cannot read the header of {file}: {err}") from None
    if not header:
        raise IngestError(f"{file} is empty (no header line)")
    return header


def report_schema(files: list[str], source: ReportSource) -> str:
    """The explicit read schema: every column of the header as STRING, plus the corrupt-record column.

    The files of one delivery share one header; a file lacking a required column is
    rejected naming it. Columns beyond the required ones are read and ignored.
    """
    header = read_header(files[0])
    for file in files[1:]:
        if read_header(file) != header:
            raise IngestError(f"{file}: header differs from {files[0]}'s")
    missing = [c for c in source.required_columns if c not in header]
    if missing:
        raise IngestError(f"{source.name}: {files[0]} lacks column(s) {', '.join(missing)}; expected "
                          f"{', '.join(source.required_columns)}")
    return ", ".join(f"`{c}` STRING" for c in header + [CORRUPT_COLUMN])


class ReportIngestJob:
    """One delivery of a report source in one Spark session: `run()` writes the four tables."""

    def __init__(self, spark, source: ReportSource, cfg: IngestConfig, raw: Path, curated_dir: Path = paths.CURATED):
        self.spark, self.source, self.cfg = spark, source, cfg
        self.raw, self.curated_dir = Path(raw), Path(curated_dir)
        self.sql = {t: read_sql(f"{source.name}_{t}") for t in ("parse",) + source.tables}

    def parse(self):
        """Every record of the delivery with `reason` (NULL = kept), typed fields and dt (materialized)."""
        files = report_files(self.raw)
        rows = self.spark.read.csv(files, schema=report_schema(files, self.source), header=True, multiLine=True,
                                   escape='"', mode="PERMISSIVE", columnNameOfCorruptRecord=CORRUPT_COLUMN,
                                   encoding="UTF-8")
        if len(files) < task_slots(self.spark, self.cfg.shuffle_partitions):  # one unsplittable file: spread it
            rows = rows.repartition(self.cfg.shuffle_partitions)
        rows.createOrReplaceTempView("report_rows")
        return materialize(self.spark.sql(self.sql["parse"]))

    def outcomes(self, parsed) -> tuple[dict[str, int], set[str], str]:
        """One pass over the parsed rows: the ingest_quality counts, the days with kept rows, and
        the run's partition (the latest kept day, else the latest valid day). IngestError for a
        report with no rows or no valid date."""
        by_reason: dict[str | None, int] = {}
        kept_days, valid_days = set(), set()
        for reason, day, n in parsed.groupBy("reason", "dt").count().collect():
            by_reason[reason] = by_reason.get(reason, 0) + n
            if day is not None:
                valid_days.add(day)
                if reason is None:
                    kept_days.add(day)
        rows_in = sum(by_reason.values())
        if rows_in == 0:
            raise IngestError(f"{self.source.name}: the report under {self.raw} has no rows")
        if not valid_days:
            raise IngestError(f"{self.source.name}: no row of the report under {self.raw} has a valid date")
        rows_kept = by_reason.pop(None, 0)
        if set(by_reason) - set(REPORT_REASONS):  # an internal bug, never bad input
            raise RuntimeError(f"unknown quarantine reasons {sorted(set(by_reason) - set(REPORT_REASONS))}")
        quality = {"rows_in": rows_in, "rows_kept": rows_kept, "rows_quarantined": sum(by_reason.values()),
                   **{f"q_{r}": by_reason.get(r, 0) for r in REPORT_REASONS}}
        return quality, kept_days, max(kept_days or valid_days)

    def run(self) -> dict[str, int]:
        """Parse, quarantine, aggregate and write; return the ingest_quality row (with its dt)."""
        from pyspark.sql import functions as F

        started = time.monotonic()
        parsed = self.parse()
        quality, kept_days, run_dt = self.outcomes(parsed)
        kept = parsed.where("reason IS NULL").drop("reason", "raw_line")
        kept.createOrReplaceTempView("kept_packages")
        for table in self.source.tables:
            self.write(table, self.spark.sql(self.sql[table]), kept_days)
        quarantine = (parsed.where("reason IS NOT NULL")
                      .select("raw_line", "reason", F.lit(None).cast("string").alias("event_id"),
                              F.lit(run_dt).alias("dt")))
        self.write("quarantine", quarantine, {run_dt} if quality["rows_quarantined"] else set())
        self.write("ingest_quality", quality_frame(self.spark, {run_dt: quality}, QUALITY_COLUMNS), {run_dt})
        parsed.unpersist()
        log.info("%s: %d rows in, %d kept, %d quarantined %s; %d partitions; %.1fs", self.source.name,
                 quality["rows_in"], quality["rows_kept"], quality["rows_quarantined"],
                 {r: quality[f"q_{r}"] for r in REPORT_REASONS if quality[f"q_{r}"]}, len(kept_days),
                 time.monotonic() - started)
        return {**quality, "dt": run_dt}

    def write(self, table: str, df, nonempty_days: set[str]) -> None:
        """The event ingest's writer; this job owns every partition of its tables (the whole delivery)."""
        owned = sorted(set(paths.partitions(self.curated_dir / table)) | nonempty_days)
        write_partitions(self.spark, self.curated_dir, table, df, owned, nonempty_days)


def run_source(spark, source: str, cfg: IngestConfig, raw: Path | None = None,
               curated_dir: Path = paths.CURATED) -> dict[str, int]:
    """Ingest the delivery landed under `raw` (default data/raw/<source>/); return its quality row."""
    return ReportIngestJob(spark, SOURCES[source], cfg, raw or raw_dir(source), curated_dir).run()


def main(argv=None) -> int:
    return run_stage("ingest_reports", __doc__, run, argv, ds=None, add_arguments=add_arguments)


def add_arguments(parser) -> None:
    parser.add_argument("--source", required=True, choices=sorted(SOURCES))
    parser.add_argument("--master", help="Spark master; overrides params ingest.master")


def run(ctx: StageContext) -> None:
    """Ingest the landed report of --source with the event ingest's Spark settings."""
    cfg = ctx.config(IngestConfig, "ingest")
    if ctx.args.master:
        cfg = dataclasses.replace(cfg, master=ctx.args.master)
    report_schema(report_files(raw_dir(ctx.args.source)), SOURCES[ctx.args.source])  # fail before starting Spark

    from plumbing.spark import stage_session

    with stage_session(cfg.master, f"relate-ingest-{ctx.args.source}", cfg.shuffle_partitions) as spark:
        run_source(spark, ctx.args.source, cfg)


if __name__ == "__main__":
    sys.exit(main())
