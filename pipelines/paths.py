"""Every path the stages share, relative to the project root (the stages' working dir)."""
from __future__ import annotations

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


def curated(table: str) -> Path:
    if table not in CURATED_TABLES:
        raise ValueError(f"unknown curated table {table!r}; known: {', '.join(CURATED_TABLES)}")
    return CURATED / table


def partition(table_dir: Path, ds: str) -> Path:
    return Path(table_dir) / f"dt={ds}"


def partitions(table_dir: Path) -> list[str]:
    """Sorted `ds` values of the complete partitions under a table directory."""
    table_dir = Path(table_dir)
    if not table_dir.is_dir():
        return []
    return sorted(p.name[3:] for p in table_dir.iterdir() if p.is_dir() and p.name.startswith("dt="))
