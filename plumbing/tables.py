"""Reading curated tables: one partition as a pandas frame."""
from __future__ import annotations

import pandas as pd
import pyarrow.parquet as pq

from plumbing.errors import DataError, MissingArtifact
from plumbing.paths import ALL_CURATED, CuratedReader, partition


def read_partition(table: str, ds: str, columns: list[str] | None = None, *,
                   curated: CuratedReader = ALL_CURATED) -> pd.DataFrame:
    """Partition `ds` of a curated table as a frame with a `dt` column.

    MissingArtifact when the partition is absent or has no Parquet file; DataError when it
    has no rows. `columns` limits what is read (default: every column).
    """
    part = partition(curated.table(table), ds)
    files = sorted(p for p in part.glob("*.parquet") if not p.name.startswith((".", "_")))
    if not files:
        raise MissingArtifact(f"{part}: partition missing or has no parquet files")
    frame = pd.concat([pq.read_table(f, columns=columns).to_pandas() for f in files], ignore_index=True)
    if frame.empty:
        raise DataError(f"{part}: partition is empty")
    frame["dt"] = ds
    return frame
