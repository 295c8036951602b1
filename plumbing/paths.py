"""Every path the stages share, relative to the run's root (the stages' working dir).

Model directories are named here once; a stage reads another stage's output through these
names, never through a path it spells itself. The root is the run's `Layout`: the directory
of the project's params.yaml, or `runs/<stem>/` for another params file (plumbing.cli makes
it the working directory for the stage's run, so every relative path here lands under it).
"""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from plumbing.dates import parse_ds

DATA = Path("data")
RAW_EVENTS = DATA / "raw" / "events"
RAW_ELEMENTS = DATA / "raw" / "elements"  # the element table delivered with the logs (per dt)
SIM_TRUTH = DATA / "sim_truth"  # read only by relate_sim and the evaluation (the honesty boundary)
CURATED = DATA / "curated"
VALIDATION = DATA / "validation"
MODELS = Path("models")
METRICS = Path("metrics")
PLOTS = Path("plots")
REPORTS = Path("reports")

TOKENIZER_DIR = MODELS / "tokenizer"
CTCVR_DIR = MODELS / "ctcvr"
ATTRIBUTION_DIR = MODELS / "attribution"
SFT_DIR = MODELS / "sft"
RELATE_DIR = MODELS / "relate"
COMBO_POLICY_DIR = MODELS / "combo_policy"
SERVING_DIR = MODELS / "serving"  # the serving tables a champion is published with (pipelines.serving_tables)
ABLATION_DIR = MODELS / "ablation"

CURATED_TABLES = (
    "events",
    "quarantine",
    "labeled_impressions",
    "text_stats",
    "combo_stats",
    "ingest_quality",
)

# the element table landed by ingest_elements (a DVC output of its own, so not under CURATED)
CONTENT = DATA / "content"
CONTENT_TABLES = ("elements", "quarantine", "quality")

DEFAULT_PARAMS_NAME = "params.yaml"
RUNS = Path("runs")  # under the project root: one directory per non-default params file


@dataclass(frozen=True)
class Layout:
    """Where one run reads and writes: every path above, under `root` (absolute).

    `for_params` is the rule: a params file named params.yaml is a project's own, and its
    outputs sit beside it (the default layout: DVC's, and a test's work dir). Any other params
    file (configs/tiny.yaml, /tmp/variant.yaml) gets a run directory of its own,
    `<project>/runs/<stem>/`, where `<project>` is the directory of the params.yaml its
    `extends:` chain ends at (the file's own directory when it extends nothing), so a tiny run
    never touches the committed metrics/, plots/ or reports/.
    """

    root: Path

    @classmethod
    def for_params(cls, params: str | os.PathLike, project: str | os.PathLike) -> "Layout":
        params = Path(params).resolve()
        if params.name == DEFAULT_PARAMS_NAME:
            return cls(params.parent)
        return cls(Path(project).resolve() / RUNS / params.stem)

    def path(self, relative: str | os.PathLike) -> Path:
        """A path of this module (DATA, METRICS, SFT_DIR, ...) under this run's root."""
        return self.root / relative

    @contextlib.contextmanager
    def entered(self) -> Iterator["Layout"]:
        """The root as the working directory (created if missing) inside the `with` block."""
        self.root.mkdir(parents=True, exist_ok=True)
        with contextlib.chdir(self.root):
            yield self


AS_OF_HELP = "end of the run's rolling window: read only curated partitions <= this day (default: all)"


def _check_table(table: str) -> str:
    if table not in CURATED_TABLES:
        raise ValueError(f"unknown curated table {table!r}; known: {', '.join(CURATED_TABLES)}")
    return table


def content_table(table: str) -> Path:
    """A table of the landed element table (data/content/<table>)."""
    if table not in CONTENT_TABLES:
        raise ValueError(f"unknown content table {table!r}; known: {', '.join(CONTENT_TABLES)}")
    return CONTENT / table


def curated(table: str) -> Path:
    """A curated table with every partition (writers and whole-history readers)."""
    return CURATED / _check_table(table)


class CuratedReader:
    """The curated tables as one run sees them: every partition, or only those <= a day.

    Stages that read whole tables take one of these as an argument, so a backfill of a past
    day reads nothing newer, and no module global decides what a function sees.
    """

    def __init__(self, root: Path = CURATED, as_of: str | None = None):
        self.root, self.as_of = Path(root), as_of

    def table(self, table: str) -> Path:
        return self.root / _check_table(table)

    def run_day(self, table: str = "labeled_impressions") -> str | None:
        """The day a run is as of: its --ds, else the newest partition of `table` it reads (None: none).

        The market and the compliance rules a run trains or scores against are those of this day."""
        if self.as_of is not None:
            return self.as_of
        days = partitions(self.table(table))
        return days[-1] if days else None


ALL_CURATED = CuratedReader()


@contextlib.contextmanager
def read_as_of(ds: str | None) -> Iterator[CuratedReader]:
    """A reader of the partitions `<= ds` (None: all), valid inside the `with` block.

    Each table becomes a read-only view, a temporary directory of links to the partitions,
    so the readers (pandas, pyarrow datasets, read_partition) stay as they are. Only for
    reading: a write through the view would land in the temporary directory.
    """
    if ds is None:
        yield ALL_CURATED
        return
    parse_ds(ds)
    view = Path(tempfile.mkdtemp(prefix=f"relate-curated-asof-{ds}-"))
    try:
        for table in CURATED_TABLES:
            (view / table).mkdir()
            for day in partitions(CURATED / table):
                if day <= ds:
                    (view / table / f"dt={day}").symlink_to(partition(CURATED / table, day).absolute(),
                                                            target_is_directory=True)
        yield CuratedReader(view, as_of=ds)
    finally:
        shutil.rmtree(view, ignore_errors=True)  # removes the links, never their targets


def partition(table_dir: Path, ds: str) -> Path:
    return Path(table_dir) / f"dt={ds}"


def partitions(table_dir: Path) -> list[str]:
    """Sorted `ds` values of the complete partitions under a table directory."""
    table_dir = Path(table_dir)
    if not table_dir.is_dir():
        return []
    return sorted(p.name[3:] for p in table_dir.iterdir() if p.is_dir() and p.name.startswith("dt="))
