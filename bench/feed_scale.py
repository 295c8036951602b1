"""GenCO at more feed traffic: MIL Spearman and generator CTR ratio vs the default scale; prints figures.

    python bench/feed_scale.py --feed-scale 4 [--workdir /tmp/relate_feed_scale]

Writes a params file equal to params.yaml except for the simulator's traffic: the same
search impressions per day, `--feed-scale` times the feed (combination) impressions. Then
runs simulate, ingest --all, train_attribution, evaluate_attribution, combo_policy and
evaluate_combo in --workdir (its own data/, models/, metrics/; the code is this checkout's),
and prints the figures beside the committed default-scale ones, with each stage's time.
Validation (GX) is skipped: it checks the data, not the attribution.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
STAGES = [["simulate"], ["ingest", "--all"], ["ingest_elements", "--all"], ["train_ctcvr"], ["train_attribution"], ["evaluate_attribution"], ["combo_policy"],
          ["evaluate_combo"]]


def scaled_params(params: dict, feed_scale: float) -> dict:
    """params with feed impressions x feed_scale per day, search impressions unchanged."""
    sim = dict(params["simulate"])
    search = sim["impressions_per_day"] * sim["search_share"]
    feed = sim["impressions_per_day"] * (1 - sim["search_share"]) * feed_scale
    sim["impressions_per_day"] = int(round(search + feed))
    sim["search_share"] = round(search / (search + feed), 6)
    return {**params, "simulate": sim}


def figures(metrics_dir: Path) -> dict:
    attribution = json.loads((metrics_dir / "attribution.json").read_text(encoding="utf-8"))
    combo_file = metrics_dir / "evaluate_combo.json"  # evaluate_combo alone; the default run nests it in evaluate.json
    combo = (json.loads(combo_file.read_text(encoding="utf-8")) if combo_file.is_file()
             else json.loads((metrics_dir / "evaluate.json").read_text(encoding="utf-8"))["combo"])
    ceiling = attribution.get("content_ceiling") or {}  # the warm content ceiling (issue 18)
    return {"feed_clicks_per_ad": ceiling.get("warm_clicks_per_ad", float("nan")),
            "mil_spearman": attribution["spearman_vs_truth"], "ceiling_spearman": ceiling.get("warm", float("nan")),
            "naive_spearman": attribution["baseline_spearman_vs_truth"],
            "generator_ratio_to_oracle": combo["true_ctr_ratio_to_oracle"]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--feed-scale", type=float, default=4.0)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/relate_feed_scale"))
    parser.add_argument("--params", type=Path, default=ROOT / "params.yaml")
    args = parser.parse_args(argv)
    if args.feed_scale <= 0:
        parser.error(f"--feed-scale must be > 0, got {args.feed_scale}")
    args.workdir.mkdir(parents=True, exist_ok=True)
    params_path = args.workdir / "params.yaml"
    params = scaled_params(yaml.safe_load(args.params.read_text(encoding="utf-8")), args.feed_scale)
    params_path.write_text(yaml.safe_dump(params, sort_keys=False), encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
           "RELATE_PARAMS": str(params_path.resolve())}
    seconds = {}
    for stage in STAGES:
        started = time.monotonic()
        print(f"[feed_scale] {' '.join(stage)} ...", flush=True)
        done = subprocess.run([sys.executable, "-m", f"pipelines.{stage[0]}", *stage[1:]], cwd=args.workdir, env=env)
        if done.returncode:
            print(f"[feed_scale] {stage[0]} failed (exit {done.returncode}); see its log above", file=sys.stderr)
            return done.returncode
        seconds[stage[0]] = round(time.monotonic() - started, 1)
    sim = params["simulate"]
    print(f"\nfeed x{args.feed_scale:g}: {sim['impressions_per_day']:,} impressions/day, search share "
          f"{sim['search_share']:.3f}; stage seconds {seconds}")
    rows = {"default (committed)": figures(ROOT / "metrics"), f"feed x{args.feed_scale:g}": figures(args.workdir / "metrics")}
    print(f"{'':22} {'clicks/ad':>9} {'MIL rho':>8} {'ceiling':>8} {'naive':>6} {'gen/oracle':>10}")
    for name, f in rows.items():
        print(f"{name:22} {f['feed_clicks_per_ad']:9.0f} {f['mil_spearman']:8.3f} {f['ceiling_spearman']:8.3f} "
              f"{f['naive_spearman']:6.3f} {f['generator_ratio_to_oracle']:10.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
