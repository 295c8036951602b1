"""What the cross-ad phrase cap (serving.pool_max_phrase_share) is worth in the closed loop's market.

    python -m evals.phrase_cap --run runs/loop_params --days 2026-01-23 [--caps 1.0 0.2] [--out metrics/phrase_cap.json]

For each day it takes the champion that served the day in the `daily_warm` arm, rebuilds its
serving tables with the serving_tables stage once per cap (the champion's own models from the
registry, the curated logs up to the day before; the candidates are sampled with the same seeds,
so cap 1.0 rebuilds the published tables), serves the day's very traffic and draws from each
(evals.loop_gap.reproduce) and scores it with the truth:

- `as_served`: on the day's market, whose phrase shares the loop's earlier days set;
- `at_equilibrium`: on the market these tables would make if they served every day (each lexicon
  phrase's smoothed share held at its share of the served search impressions): where a champion
  kept by the gates ends up, and what phrase fatigue takes from it;
- the largest phrase share of the served impressions.

Uplifts are over the `logging` arm's day as served. The scratch projects live under --work and
are removed unless --keep. Reads the simulator: an evaluation, never a stage.
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from evals.loop_gap import earlier_exposures, market_at_equilibrium, reproduce, served_shares, true_ctcvr
from pipelines.publish_registry import ARTIFACTS
from plumbing.config import dump_params, load_params
from plumbing.dates import shift_ds
from relate_sim.serving_tables import ServingTables


def rebuild_tables(arm_dir: Path, version: str, ds: str, cap: float, work: Path) -> Path:
    """models/serving of `version` rebuilt with the cap, in a scratch project over the arm's data."""
    project = work / f"{version}-cap{cap}"
    (project / "models").mkdir(parents=True)
    (project / "data").symlink_to((arm_dir / "data").resolve())
    for name, target in ARTIFACTS.items():
        source = arm_dir / "registry" / version / name
        if source.is_dir():
            (project / target).symlink_to(source.resolve())
    params = load_params(arm_dir / "params.yaml")  # resolved: the run may predate the cap's key
    params["serving"]["pool_max_phrase_share"] = cap
    (project / "params.yaml").write_text(dump_params(params))
    subprocess.run([sys.executable, "-m", "pipelines.serving_tables", "--params", str(project / "params.yaml"),
                    "--ds", ds], check=True)
    return project / "models" / "serving"


def score(rep) -> dict[str, float]:
    """True search CTCVR of what `rep` served, on the day's market and at the tables' own equilibrium."""
    seen = earlier_exposures(rep, rep.creative, True)
    shares = served_shares(rep, rep.creative)
    eq = market_at_equilibrium(rep, shares)
    return {"as_served": float(true_ctcvr(rep, rep.sim, rep.creative, seen, False).mean()),
            "at_equilibrium": float(true_ctcvr(rep, eq, rep.creative, seen, False).mean()),
            "top_phrase_share": float(shares.max()),
            "distinct_texts": int(len(np.unique(rep.sim.tables.text_signature[rep.ad, rep.creative])))}


def one_day(run: Path, ds: str, caps: list[float], work: Path) -> dict:
    arm_dir = run / "daily_warm"
    records = json.loads((arm_dir / "loop" / "records.json").read_text())
    version = next(r.get("served_by") for r in records if r["ds"] == ds)
    if not version:
        raise SystemExit(f"{arm_dir}: no champion served {ds}")
    logging = reproduce(run / "logging", ds)
    base = float(true_ctcvr(logging, logging.sim, logging.creative,
                            earlier_exposures(logging, logging.creative, True), False).mean())
    published = score(reproduce(arm_dir, ds))
    day = {"champion": version, "logging_as_served": base, "published": published, "caps": {}}
    for cap in caps:
        folder = rebuild_tables(arm_dir, version, shift_ds(ds, -1), cap, work)
        res = score(reproduce(arm_dir, ds, ServingTables.load(folder, version)))
        res.update({f"uplift_{k}_vs_logging": res[k] / base - 1 for k in ("as_served", "at_equilibrium")})
        day["caps"][str(cap)] = res
        print(f"{ds} cap {cap}: top phrase share {res['top_phrase_share']:.2f}; true CTCVR as served "
              f"{res['uplift_as_served_vs_logging']:+.1%}, at equilibrium {res['uplift_at_equilibrium_vs_logging']:+.1%} "
              f"over logging (published tables as served: {published['as_served'] / base - 1:+.1%})", flush=True)
    return day


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", type=Path, default=Path("runs/loop_params"))
    ap.add_argument("--days", nargs="+", default=["2026-01-23"])
    ap.add_argument("--caps", nargs="+", type=float, default=[1.0, 0.2])
    ap.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temporary one)")
    ap.add_argument("--keep", action="store_true", help="keep the scratch projects")
    ap.add_argument("--out", type=Path, default=Path("metrics/phrase_cap.json"))
    args = ap.parse_args(argv)
    work = args.work or Path(tempfile.mkdtemp(prefix="phrase_cap-"))
    try:
        out = {"run": str(args.run), "caps": args.caps,
               "days": {ds: one_day(args.run, ds, args.caps, work) for ds in args.days}}
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(out, indent=1))
    tmp.replace(args.out)
    print(f"-> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
