"""Stage `simulate`: write the simulated ad market's raw event logs and its hidden truth.

    python -m pipelines.simulate [--params params.yaml] [--ds YYYY-MM-DD] [--serving DIR]

Without --ds: every day start_date .. start_date + days - 1, in order. With --ds D: day D
only, from the carry state the days before it left in data/sim_truth/state/ (those without
state are simulated first). --serving DIR: the champion's serving tables (text_pools.parquet,
combos.parquet; relate_sim/serving_tables.py) served on the simulated day(s), mixed with the
logging policy's exploration; without it the logging policy serves. The market drifts day by
day (simulate.drift, docs/simulator.md). Writes data/raw/events/dt=*/part-*.jsonl.gz (each
day atomically), data/raw/elements/dt=*/ (the day's element table: docs/data_contract.md), data/sim_truth/ (world.json, per-impression true probabilities, per-day
state) and metrics/simulate.json (every simulated day so far). Deterministic: day D's bytes
are a pure function of the params, the serving tables and the days before D, so `--ds D` per
day in order writes what one run without --ds writes.
"""
from __future__ import annotations

import sys

from pipelines.ingest_elements import IngestElementsConfig
from plumbing import atomic
from plumbing.cli import StageContext, run_stage
from plumbing.dates import shift_ds
from plumbing.errors import ConfigError
from plumbing.logs import get_logger
from plumbing.paths import METRICS, RAW_ELEMENTS, RAW_EVENTS, SIM_TRUTH, partitions
from relate_sim.config import SimulateConfig
from relate_sim.drift import day_index
from relate_sim.serving_tables import ServingTables
from relate_sim.writer import simulate

__all__ = ["SimulateConfig", "main"]
log = get_logger(__name__)


def main(argv: list[str] | None = None) -> int:
    return run_stage("simulate", __doc__, run, argv, ds="partition", add_arguments=_arguments)


def _arguments(parser) -> None:
    parser.add_argument("--serving", default=None, help="folder of the champion's serving tables (default: none)")


def run(ctx: StageContext) -> None:
    """Simulate the configured days (or the one day --ds); a bad config or day exits 2 (plumbing.cli)."""
    config = ctx.config(SimulateConfig)
    last = shift_ds(config.start_date, config.days - 1)
    days = None
    if ctx.ds is not None:
        try:
            day = day_index(config.start_date, ctx.ds)
        except ValueError as err:
            raise ConfigError(f"--ds: {err}") from None
        if not 0 <= day < config.days:
            raise ConfigError(f"--ds {ctx.ds} is outside the simulated range {config.start_date} .. {last}")
        days = [day]
    log.info("simulating %s, %d impressions/day, seed %d, drift %s", ctx.ds or f"{config.start_date} .. {last}",
             config.impressions_per_day, config.seed, "on" if config.drift.enabled else "off")
    serving = ServingTables.load(ctx.args.serving) if ctx.args.serving else None
    embedding_dim = ctx.config(IngestElementsConfig, "ingest_elements").embedding_dim  # the contract's length
    summary = simulate(config, RAW_EVENTS, SIM_TRUTH, days=days, serving=serving, elements_root=RAW_ELEMENTS,
                       embedding_dim=embedding_dim)
    stale = [ds for ds in partitions(RAW_EVENTS) if not config.start_date <= ds <= last]
    if stale:
        log.warning("raw partitions outside this run's range are left as they were: %s", ", ".join(stale))
    atomic.write_json(METRICS / "simulate.json", {k: v for k, v in summary.items() if k != "wall_s"})
    totals = summary["totals"]
    log.info("done in %.1fs; all simulated days: %d impressions, %d clicks, %d conversions written; CTR %.4f, "
             "CVR %.4f, non-compliant share of search served %.4f, %d duplicates, %d corrupt lines",
             summary["wall_s"], totals["impression"], totals["click"], totals["conversion"], summary["ctr"],
             summary["cvr"], summary["noncompliant_served_share"], totals["duplicates"], totals["corrupt"])


if __name__ == "__main__":
    sys.exit(main())
