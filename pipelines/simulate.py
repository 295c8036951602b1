"""Stage `simulate`: write the simulated ad market's raw event logs and its hidden truth.

    python -m pipelines.simulate [--params params.yaml]

Writes data/raw/events/dt=*/part-*.jsonl.gz for start_date .. start_date + days - 1 (each
day atomically), data/sim_truth/ (world.json and per-impression true probabilities) and
metrics/simulate.json. Deterministic in the params: a rerun rewrites identical bytes.
"""
from __future__ import annotations

import sys

from plumbing import atomic
from plumbing.cli import StageContext, run_stage
from plumbing.dates import shift_ds
from plumbing.logs import get_logger
from plumbing.paths import METRICS, RAW_EVENTS, SIM_TRUTH, partitions
from relate_sim.config import SimulateConfig
from relate_sim.writer import simulate

__all__ = ["SimulateConfig", "main"]
log = get_logger(__name__)


def main(argv: list[str] | None = None) -> int:
    return run_stage("simulate", __doc__, run, argv, ds=None)


def run(ctx: StageContext) -> None:
    """Simulate every configured day; a bad config exits 2 (plumbing.cli)."""
    config = ctx.config(SimulateConfig)
    last = shift_ds(config.start_date, config.days - 1)
    log.info("simulating %s .. %s, %d impressions/day, seed %d", config.start_date, last,
             config.impressions_per_day, config.seed)
    summary = simulate(config, RAW_EVENTS, SIM_TRUTH)
    stale = [ds for ds in partitions(RAW_EVENTS) if not config.start_date <= ds <= last]
    if stale:
        log.warning("raw partitions outside this run's range are left as they were: %s", ", ".join(stale))
    atomic.write_json(METRICS / "simulate.json", {k: v for k, v in summary.items() if k != "wall_s"})
    totals = summary["totals"]
    log.info("done in %.1fs: %d impressions, %d clicks, %d conversions written; CTR %.4f, CVR %.4f, "
             "non-compliant share of search served %.4f, %d duplicates, %d corrupt lines",
             summary["wall_s"], totals["impression"], totals["click"], totals["conversion"], summary["ctr"],
             summary["cvr"], summary["noncompliant_served_share"], totals["duplicates"], totals["corrupt"])


if __name__ == "__main__":
    sys.exit(main())
