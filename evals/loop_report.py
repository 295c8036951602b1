"""Redraw the closed-loop report of a finished run, with measures its simulator did not yet record.

    python -m evals.loop_report [--run runs/loop_params] [--params params.yaml]

Writes metrics/closed_loop.json, plots/closed_loop/ and reports/closed_loop.md under the working
directory (as `pipelines.closed_loop` does at the end of a run) from the records of every arm under
`--run`. A day whose record lacks a measure newer than the run gets it from what the day served:

- the most served search bigram, from the simulator's served record (served.json);
- the search true CTCVR with non-compliant texts valued at nothing: the day's search impressions
  re-drawn exactly (`evals.loop_gap.reproduce`; their true CTCVR must sum to the record's, or it
  stops), each weighted by its text's compliance on that day (a few seconds a day).

It reads the simulator's truth, so it is an evaluation. The run folder is only read.
"""
from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path

import numpy as np

from evals.loop_gap import reproduce
from pipelines.closed_loop import ARMS, ClosedLoopConfig
from pipelines.closed_loop_metrics import COMPLIANT_VALUE_KEYS, rates, served_record, top_bigram
from pipelines.closed_loop_report import write_report
from plumbing.config import load_config
from plumbing.logs import get_logger
from relate_sim.writer import compliant_ctcvr_sums

log = get_logger("loop_report")


def compliant_value_sums(arm_dir: Path, ds: str, sum_ctcvr: float) -> dict:
    """The day's search sums of true CTCVR with non-compliant texts valued at nothing, from an exact re-draw."""
    rep = reproduce(arm_dir, ds)
    y = rep.sim_p_click * rep.sim_p_conv
    if not np.isclose(y.sum(), sum_ctcvr, rtol=1e-9, atol=0.0):
        raise SystemExit(f"{arm_dir.name} {ds}: the re-drawn search impressions sum to {y.sum()!r}, the record "
                         f"to {sum_ctcvr!r}; this simulator does not reproduce the run")
    return compliant_ctcvr_sums(y, rep.sim.tables.text_compliant[rep.ad, rep.creative])


def filled(arm_dir: Path, records: list[dict]) -> list[dict]:
    """The arm's records with the measures they lack filled in."""
    out = copy.deepcopy(records)
    for r in out:
        m = r.get("measure")
        if m is None:
            continue
        if "search_top_bigram" not in m:
            m["search_top_bigram"] = top_bigram(served_record(arm_dir, r["ds"])["search_texts"])
        sums = m["sums"]["search"]
        if not all(k in sums for k in COMPLIANT_VALUE_KEYS):
            log.info("%s %s: re-drawing the search impressions", arm_dir.name, r["ds"])
            sums.update(compliant_value_sums(arm_dir, r["ds"], sums["sum_ctcvr"]))
            m["search"] = rates(sums)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", type=Path, default=Path("runs/loop_params"))
    ap.add_argument("--params", type=Path, default=Path("params.yaml"))
    args = ap.parse_args(argv)
    cfg = load_config(ClosedLoopConfig, "closed_loop", args.params)
    records = {}
    for arm in ARMS:
        path = args.run / arm / "loop" / "records.json"
        if path.is_file():
            records[arm] = filled(args.run / arm, json.loads(path.read_text()))
    if not records:
        raise SystemExit(f"{args.run}: no arm with loop/records.json")
    out = write_report(records, cfg, args.params)
    print(out["headline"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
