"""Stage `validate`: the Great Expectations gate between ingest and training.

    python -m pipelines.validate --ds 2026-01-03     # one day (what the Airflow task runs)
    python -m pipelines.validate --all               # every ingested day, in order (dvc repro)

Validates the curated partitions of each day against the suites in pipelines.expectations,
writes `data/validation/<ds>/` (one JSON result per suite, a summary, Data Docs HTML) and
`metrics/validate.json`. Exit 0 when every suite of every day passed, after writing
`data/validation/_SUCCESS` (downstream stages depend on it); 1 when a suite failed; 2 on
bad arguments, bad params or missing or unreadable curated partitions (plumbing.cli).
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
import time
import warnings
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.dataset as pads

from pipelines.ingest_elements import IngestElementsConfig
from pipelines.stages import VALIDATION_FAILED_EXIT_CODE
from plumbing import atomic, paths
from plumbing.cli import StageContext, run_stage
from plumbing.config import require
from plumbing.dates import day_bounds_ms, parse_ds, shift_ds
from plumbing.errors import ConfigError, DataError, MissingArtifact
from plumbing.logs import get_logger

log = get_logger("pipelines.validate")  # not __name__: it is "__main__" under `python -m`

SUCCESS_MARKER = paths.VALIDATION / "_SUCCESS"
METRICS_FILE = paths.METRICS / "validate.json"
REQUIRED_TABLES = ("events", "labeled_impressions", "text_stats", "combo_stats", "ingest_quality")
DOCS_SITE = "validation_site"


@dataclasses.dataclass
class ValidateConfig:
    volume_drift_tolerance: float  # today's labeled impressions within +-this share of the trailing mean
    volume_history_days: int  # how many earlier days the trailing mean looks back over
    max_quarantine_rate: float  # rows_quarantined / rows_in above this fails the gate
    unexpected_examples: int  # unexpected values kept per failed expectation

    def __post_init__(self):
        require(self.volume_drift_tolerance > 0, "validate.volume_drift_tolerance", "must be > 0")
        require(self.volume_history_days >= 0, "validate.volume_history_days", "must be >= 0")
        require(0 <= self.max_quarantine_rate <= 1, "validate.max_quarantine_rate", "must be in [0, 1]")
        require(0 <= self.unexpected_examples <= 100, "validate.unexpected_examples", "must be in [0, 100]")


class MissingPartitions(MissingArtifact):
    """A day to validate lacks curated partitions (ingest has not run for it)."""


class UnreadablePartition(DataError):
    """A curated partition exists but is not readable Parquet."""


# ---------------------------------------------------------------- reading partitions

# Integer columns with nulls (position on click events) would otherwise become float64.
_NULLABLE_INTS = {
    pa.int8(): pd.Int8Dtype(), pa.int16(): pd.Int16Dtype(), pa.int32(): pd.Int32Dtype(), pa.int64(): pd.Int64Dtype(),
    pa.uint8(): pd.UInt8Dtype(), pa.uint16(): pd.UInt16Dtype(), pa.uint32(): pd.UInt32Dtype(),
    pa.uint64(): pd.UInt64Dtype(),
}


def _dataset(table: str, ds: str) -> pads.Dataset:
    return pads.dataset(paths.partition(paths.curated(table), ds), format="parquet", partitioning=None)


def read_partition(table: str, ds: str) -> pd.DataFrame:
    """One curated partition as a frame, with its `dt` column restored from the directory name.

    Not plumbing.tables.read_partition: GX checks integer columns as read, so nullable ints
    stay Int64 (not float64) and an unreadable file is an UnreadablePartition.
    """
    try:
        frame = _dataset(table, ds).to_table().to_pandas(types_mapper=_NULLABLE_INTS.get)
    except (pa.ArrowException, OSError) as err:
        raise UnreadablePartition(f"cannot read {paths.partition(paths.curated(table), ds)}: {err}") from None
    if "dt" not in frame.columns:
        frame["dt"] = ds
    return frame.copy()  # consolidated blocks: GX filters the frame per row condition, which is slow otherwise


def partition_rows(table: str, ds: str) -> int:
    return _dataset(table, ds).count_rows()  # from Parquet footers, no data read


def ingested_days() -> list[str]:
    """Every day an ingest run has finished for (it writes one ingest_quality row per run)."""
    return paths.partitions(paths.curated("ingest_quality"))


def check_partitions(days: list[str]) -> None:
    missing = [
        str(paths.partition(paths.curated(table), ds))
        for ds in days
        for table in REQUIRED_TABLES
        if not paths.partition(paths.curated(table), ds).is_dir()
    ]
    if missing:
        raise MissingPartitions(
            f"missing curated partition(s): {', '.join(missing)}; run `python -m pipelines.ingest --ds <ds>` first"
        )


# ---------------------------------------------------------------- per-day inputs

def derive_quality_columns(quality: pd.DataFrame, events_rows: int,
                           kept_column: str = "events_partition_rows") -> pd.DataFrame:
    """Add the derived columns the ingest_quality (and element_quality) suite checks (see pipelines.expectations):
    `kept_column` holds the row count of the partition the kept rows went to."""
    quality = quality.copy()
    cols = set(quality.columns)
    if {"rows_kept", "rows_quarantined"} <= cols:
        quality["rows_kept_plus_quarantined"] = quality["rows_kept"] + quality["rows_quarantined"]
    reason_cols = [c for c in quality.columns if c.startswith("q_")]
    quality["quarantine_reasons_total"] = quality[reason_cols].sum(axis=1) if reason_cols else 0
    if {"rows_in", "rows_quarantined"} <= cols:
        rows_in = quality["rows_in"].astype("Float64")
        quality["quarantine_rate"] = (quality["rows_quarantined"] / rows_in.where(rows_in > 0)).fillna(0.0)
    quality[kept_column] = events_rows
    return quality


def element_frames(ds: str) -> dict[str, pd.DataFrame]:
    """The day's landed element table and its quality row, with the derived columns their suites check
    ({} when ingest_elements has not landed the day: see unrun_outcome)."""
    part = paths.partition(paths.content_table("elements"), ds)
    quality_part = paths.partition(paths.content_table("quality"), ds)
    if not (part.is_dir() and quality_part.is_dir()):
        return {}
    try:
        elements = pads.dataset(part, format="parquet").to_table().to_pandas()
        quality = pads.dataset(quality_part, format="parquet").to_table().to_pandas(types_mapper=_NULLABLE_INTS.get)
    except (pa.ArrowException, OSError) as err:
        raise UnreadablePartition(f"cannot read the element table of {ds}: {err}") from None
    elements["dt"] = ds
    elements["embedding_length"] = [0 if e is None else len(e) for e in elements["embedding"]]
    return {"elements": elements.copy(),
            "element_quality": derive_quality_columns(quality, len(elements), kept_column="kept_partition_rows")}


@dataclasses.dataclass
class VolumeBand:
    today: int
    history: dict[str, int]
    low: int
    high: int

    @property
    def mean(self) -> float:
        return sum(self.history.values()) / len(self.history)


def volume_band(ds: str, today: int, cfg: ValidateConfig) -> VolumeBand | None:
    """The allowed band for today's labeled impression count, or None without history."""
    table = paths.curated("labeled_impressions")
    earlier = [shift_ds(ds, -k) for k in range(cfg.volume_history_days, 0, -1)]
    history = {d: partition_rows("labeled_impressions", d) for d in earlier if paths.partition(table, d).is_dir()}
    if not history:
        return None
    mean = sum(history.values()) / len(history)
    low = math.ceil(mean * (1 - cfg.volume_drift_tolerance))
    high = math.floor(mean * (1 + cfg.volume_drift_tolerance))
    return VolumeBand(today=today, history=history, low=max(low, 0), high=high)


# ---------------------------------------------------------------- the gate

def _quiet_gx():
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"great_expectations.*")
    import logging

    logging.getLogger("great_expectations").setLevel(logging.ERROR)


class Gate:
    """One GX context, data source and set of suites per process, reused for every day."""

    def __init__(self, cfg: ValidateConfig, embedding_dim: int):
        _quiet_gx()
        import great_expectations as gx
        from great_expectations.data_context.types.base import ProgressBarsConfig

        from pipelines import expectations

        started = time.monotonic()
        self.cfg, self.embedding_dim = cfg, embedding_dim
        self.gx = gx
        self.context = gx.get_context(mode="ephemeral")
        self.context.variables.progress_bars = ProgressBarsConfig(globally=False)
        for site in list(self.context.list_data_docs_sites()):
            self.context.delete_data_docs_site(site)  # the default site writes to a temp dir
        self._docs_dir: str | None = None
        source = self.context.data_sources.add_pandas("curated")
        batches = {
            table: source.add_dataframe_asset(table).add_batch_definition_whole_dataframe("partition")
            for table in set(expectations.SUITE_TABLES.values())
        }
        self.suite_tables = dict(expectations.SUITE_TABLES)
        self.definitions = {}
        for suite in expectations.all_suites(cfg.max_quarantine_rate):
            suite = self.context.suites.add(suite)
            self.definitions[suite.name] = self.context.validation_definitions.add(
                gx.ValidationDefinition(name=suite.name, data=batches[self.suite_tables[suite.name]], suite=suite)
            )
        log.info("GX context and %d suites ready in %.1fs", len(self.definitions), time.monotonic() - started)

    def _point_docs_at(self, directory: Path) -> None:
        site = {
            "class_name": "SiteBuilder",
            "store_backend": {"class_name": "TupleFilesystemStoreBackend", "base_directory": str(directory.resolve())},
            "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
        }
        if self._docs_dir is None:
            self.context.add_data_docs_site(DOCS_SITE, site)
        else:
            self.context.update_data_docs_site(DOCS_SITE, site)
        self._docs_dir = str(directory)

    def _forget_results(self) -> None:
        # Each day's Data Docs show that day's results only.
        store = self.context.validation_results_store
        for key in store.list_keys():
            store.remove_key(key)

    def run_suite(self, name: str, frame: pd.DataFrame, parameters: dict, run_id=None):
        """One suite's GX result on `frame` with the suite parameters `parameters`."""
        return self.definitions[name].run(
            batch_parameters={"dataframe": frame}, expectation_parameters=parameters, run_id=run_id,
            result_format={"result_format": "SUMMARY", "partial_unexpected_count": self.cfg.unexpected_examples})

    def validate_day(self, ds: str) -> dict:
        """Validate every suite for `ds`; write data/validation/<ds>/ atomically; return the day report."""
        from great_expectations.core.run_identifier import RunIdentifier

        started = time.monotonic()
        frames = {table: read_partition(table, ds) for table in REQUIRED_TABLES}
        events = frames["events"]
        frames["ingest_quality"] = derive_quality_columns(frames["ingest_quality"], len(events))
        frames.update(element_frames(ds))
        ts_min, ts_end = day_bounds_ms(ds)
        impression_events = int((events["event_type"] == "impression").sum()) if "event_type" in events else 0
        parameters = {"ts_min": ts_min, "ts_max": ts_end - 1, "impression_events": impression_events,
                      "embedding_dim": self.embedding_dim}
        band = volume_band(ds, len(frames["labeled_impressions"]), self.cfg)
        if band is None:
            log.info("%s: volume check skipped: no labeled_impressions partitions in the %d days before",
                     ds, self.cfg.volume_history_days)
        else:
            parameters.update(volume_min=band.low, volume_max=band.high)
        run_id = RunIdentifier(run_name=f"validate-{ds}")

        report = {"success": True, "rows": {t: len(f) for t, f in frames.items()}, "suites": {}}
        with atomic.directory(paths.VALIDATION / ds) as staging:
            self._forget_results()
            self._point_docs_at(staging / "data_docs")
            for name in self.definitions:
                not_run = unrun_outcome(name, band, frames, ds)
                if not_run:
                    report["suites"][name] = not_run
                    report["success"] &= not_run["success"]
                    continue
                result = self.run_suite(name, frames[self.suite_tables[name]], parameters, run_id)
                result_dict = result.to_json_dict()
                atomic.write_text(staging / f"{name}.json", json.dumps(result_dict, indent=2, default=str) + "\n")
                failures = [failure_summary(name, r) for r in result_dict["results"] if not r["success"]]
                report["suites"][name] = {
                    "success": bool(result.success),
                    "evaluated": len(result_dict["results"]),
                    "failed": len(failures),
                    "failed_expectations": failures,
                }
                report["success"] &= bool(result.success)
            if band is not None:
                report["volume"] = {"today": band.today, "history_mean": round(band.mean, 3),
                                    "history_days": len(band.history), "allowed": [band.low, band.high]}
            self.context.build_data_docs(site_names=[DOCS_SITE])
            atomic.write_json(staging / "summary.json", {"ds": ds, **report})
        log.info("%s: %s in %.1fs (%s)", ds, "PASSED" if report["success"] else "FAILED", time.monotonic() - started,
                 ", ".join(f"{t}={n}" for t, n in report["rows"].items()))
        return report


def unrun_outcome(suite: str, band: VolumeBand | None, frames: dict, ds: str) -> dict | None:
    """The report entry of a suite not run on a day (None: it is run): skipped, or failed when an element
    table was delivered for the day but not landed (a content model would train without its content)."""
    if suite == "volume" and band is None:
        return {"success": True, "skipped": "no earlier labeled_impressions partitions"}
    if suite in ("elements", "element_quality") and suite not in frames:
        if not paths.partition(paths.RAW_ELEMENTS, ds).is_dir():
            return {"success": True, "skipped": "no element table delivered for the day"}
        missing = {"suite": suite, "expectation": "element_table_landed", "columns": [], "expected": {},
                   "observed": f"delivered under {paths.partition(paths.RAW_ELEMENTS, ds)} but not landed: "
                               f"run python -m pipelines.ingest_elements --ds {ds}", "examples": []}
        return {"success": False, "evaluated": 0, "failed": 1, "failed_expectations": [missing]}
    return None


def failure_summary(suite: str, result: dict) -> dict:
    """The readable part of one failed expectation result."""
    config = result["expectation_config"]
    kwargs = {k: v for k, v in config["kwargs"].items() if k != "batch_id"}
    columns = [kwargs.pop(k) for k in ("column", "column_A", "column_B") if k in kwargs]
    columns += kwargs.pop("column_list", [])
    outcome = result.get("result") or {}
    if (outcome.get("details") or {}).get("mismatched"):
        observed = outcome["details"]["mismatched"]  # column sets: what is missing or unexpected
    elif "observed_value" in outcome:
        observed = outcome["observed_value"]
    elif "unexpected_count" in outcome:
        observed = f"{outcome['unexpected_count']} of {outcome.get('element_count')} rows unexpected"
    else:
        observed = None
    exception = (result.get("exception_info") or {})
    if exception.get("raised_exception"):
        observed = f"error: {exception.get('exception_message')}"
    return {
        "suite": suite,
        "expectation": config["type"],
        "columns": columns,
        "expected": kwargs,
        "observed": observed,
        "examples": outcome.get("partial_unexpected_list", [])[:10],
    }


def log_failures(ds: str, report: dict) -> None:
    for suite in report["suites"].values():
        for f in suite.get("failed_expectations", []):
            log.error(
                "%s FAILED %s.%s%s: observed %s; expected %s%s",
                ds, f["suite"], f["expectation"],
                f" [{', '.join(map(str, f['columns']))}]" if f["columns"] else "",
                f["observed"], json.dumps(f["expected"], default=str),
                f"; e.g. {f['examples']}" if f["examples"] else "",
            )


# ---------------------------------------------------------------- wiring

def metrics_for(reports: dict[str, dict]) -> dict:
    return {
        "success": all(r["success"] for r in reports.values()),
        "days_validated": len(reports),
        "days_failed": sorted(ds for ds, r in reports.items() if not r["success"]),
        "days": {
            ds: {
                "success": r["success"],
                "rows": r["rows"],
                **({"volume": r["volume"]} if "volume" in r else {}),
                "suites": {
                    name: {k: v for k, v in s.items() if k != "failed_expectations"}
                    | {"failed_expectation_types": sorted({f["expectation"] for f in s.get("failed_expectations", [])})}
                    for name, s in r["suites"].items()
                },
            }
            for ds, r in reports.items()
        },
    }


def main(argv=None) -> int:
    return run_stage("validate", __doc__, run, argv, ds="partition", add_arguments=add_arguments)


def add_arguments(parser) -> None:
    parser.add_argument("--all", action="store_true", help="validate every ingested day, in order")


def days_to_validate(ctx: StageContext) -> list[str]:
    """[--ds], or every ingested day with --all; MissingPartitions if a day lacks a table."""
    days = [parse_ds(ctx.ds).isoformat()] if ctx.ds else ingested_days()
    if not days:
        raise MissingPartitions(f"no ingested days under {paths.curated('ingest_quality')}; run ingest first")
    check_partitions(days)
    return days


def run(ctx: StageContext) -> int:
    """Validate the days; 1 when a suite failed, else write the success marker."""
    if (ctx.ds is None) == (not ctx.args.all):  # a malformed command leaves the marker alone
        raise ConfigError("give one of --ds YYYY-MM-DD or --all")
    SUCCESS_MARKER.unlink(missing_ok=True)  # whatever happens below, downstream waits for a fresh pass
    cfg = ctx.config(ValidateConfig)
    days = days_to_validate(ctx)
    atomic.clean_stale_staging(paths.VALIDATION)

    started = time.monotonic()
    gate = Gate(cfg, ctx.config(IngestElementsConfig, "ingest_elements").embedding_dim)
    reports = {}
    for ds in days:
        reports[ds] = gate.validate_day(ds)
        if not reports[ds]["success"]:
            log_failures(ds, reports[ds])
    metrics = metrics_for(reports)
    atomic.write_json(METRICS_FILE, metrics)
    log.info("validated %d day(s) in %.1fs", len(days), time.monotonic() - started)
    if not metrics["success"]:
        log.error("validation FAILED for %s; nothing downstream runs (see data/validation/<ds>/)",
                  ", ".join(metrics["days_failed"]))
        return VALIDATION_FAILED_EXIT_CODE
    atomic.write_text(SUCCESS_MARKER, "".join(f"{ds}\n" for ds in days))
    return 0


if __name__ == "__main__":
    sys.exit(main())
