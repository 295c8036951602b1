"""Every path the stages share, relative to the project root (the stages' working dir)."""
from __future__ import annotations

import atexit
import shutil
import tempfile
from pathlib import Path

DATA = Path("data")
RAW_EVENTS = DATA / "raw" / "events"
SIM_TRUTH = DATA / "sim_truth"  # read only by relate_sim and pipelines.evaluate
CURATED = DATA / "curated"
VALIDATION = DATA / "validation"
MODELS = Path("models")
METRICS = Path("metrics")
PLOTS = Path("plots")

CURATED_TABLES = (
    "events",
    "quarantine",
    "labeled_impressions",
    "text_stats",
    "combo_stats",
    "ingest_quality",
)


AS_OF_HELP = "end of the run's rolling window: read only curated partitions <= this day (default: all)"
# Set by read_as_of(): a directory of per-table views that show only the partitions <= a day.
_as_of_view: Path | None = None


def curated(table: str) -> Path:
    if table not in CURATED_TABLES:
        raise ValueError(f"unknown curated table {table!r}; known: {', '.join(CURATED_TABLES)}")
    return (_as_of_view if _as_of_view is not None else CURATED) / table


def read_as_of(ds: str | None) -> None:
    """From now on in this process, `curated()` shows only the partitions `<= ds` (None: all).

    For the stages that read the curated tables whole (sft, grpo, combo_policy, evaluate):
    their `--ds` is the end of the run's rolling window, so a backfill of a past day reads
    nothing newer. Each table becomes a read-only view, a temporary directory of links to
    the partitions, so the readers (pandas, pyarrow datasets, read_partition) stay as they are.
    Only for reading stages: a write through the view would land in the temporary directory.
    """
    global _as_of_view
    from pipelines.dates import parse_ds

    if _as_of_view is not None:
        shutil.rmtree(_as_of_view, ignore_errors=True)  # removes the links, never their targets
        _as_of_view = None
    if ds is None:
        return
    parse_ds(ds)
    view = Path(tempfile.mkdtemp(prefix=f"relate-curated-asof-{ds}-"))
    atexit.register(shutil.rmtree, view, ignore_errors=True)
    for table in CURATED_TABLES:
        (view / table).mkdir()
        for day in partitions(CURATED / table):
            if day <= ds:
                (view / table / f"dt={day}").symlink_to(partition(CURATED / table, day).absolute(),
                                                        target_is_directory=True)
    _as_of_view = view


def partition(table_dir: Path, ds: str) -> Path:
    return Path(table_dir) / f"dt={ds}"


def partitions(table_dir: Path) -> list[str]:
    """Sorted `ds` values of the complete partitions under a table directory."""
    table_dir = Path(table_dir)
    if not table_dir.is_dir():
        return []
    return sorted(p.name[3:] for p in table_dir.iterdir() if p.is_dir() and p.name.startswith("dt="))
