"""Run dates: `ds` strings validated as real dates, never pasted from untrusted text."""
from __future__ import annotations

import datetime as dt
import re

from plumbing.errors import ConfigError

_DS_RE = re.compile(r"^\d{4}-\d{2}-\d{2}$")


def parse_ds(ds: str) -> dt.date:
    """Parse a `YYYY-MM-DD` run date, raising ConfigError (a ValueError) that names the bad value."""
    if not isinstance(ds, str) or not _DS_RE.match(ds):
        raise ConfigError(f"ds must be a date as YYYY-MM-DD, got {ds!r}")
    try:
        return dt.date.fromisoformat(ds)
    except ValueError as err:
        raise ConfigError(f"ds {ds!r} is not a real date: {err}") from None


def format_ds(day: dt.date) -> str:
    return day.isoformat()


def shift_ds(ds: str, days: int) -> str:
    return format_ds(parse_ds(ds) + dt.timedelta(days=days))


def ds_range(start: str, end: str) -> list[str]:
    """Inclusive list of dates from start to end."""
    first, last = parse_ds(start), parse_ds(end)
    if last < first:
        raise ConfigError(f"date range is empty: {start} > {end}")
    return [format_ds(first + dt.timedelta(days=i)) for i in range((last - first).days + 1)]


def day_bounds_ms(ds: str) -> tuple[int, int]:
    """[start, end) of the day `ds` in epoch milliseconds, UTC."""
    start = dt.datetime.combine(parse_ds(ds), dt.time(0), tzinfo=dt.timezone.utc)
    start_ms = int(start.timestamp() * 1000)
    return start_ms, start_ms + 86_400_000
