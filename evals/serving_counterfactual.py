"""What other settings would have earned on a closed-loop day: a champion's tables rebuilt with them.

    python -m evals.serving_counterfactual --run runs/loop_params --days 2026-01-22 \
        --variants serving.pool_ctcvr_weight=0.1 serving.pool_ctcvr_weight=1 [--retrain] [--out FILE]

For each day it takes the champion that served the day in the `daily_warm` arm and, once per
variant (comma-separated `section.key[.key]=value` params overrides), rebuilds its serving tables
with the serving_tables stage: the champion's own models from the registry, the curated logs up
to the day before; the candidates are sampled with the same seeds, so the run's own settings
rebuild the published tables. With --retrain, the grpo stage first trains the policy afresh
(training.mode full) from the champion's SFT model, CTCVR model and tokenizer, so a variant of
the policy's rewards is measured too. Each variant serves the day's very traffic and draws
(evals.loop_gap.reproduce) and is scored with the truth:

- `as_served`: on the day's market, whose phrase shares the loop's earlier days set;
- `at_equilibrium`: on the market these tables would make if they served every day (each lexicon
  phrase's smoothed share held at its share of the served search impressions);
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
import yaml

from evals.loop_gap import earlier_exposures, market_at_equilibrium, reproduce, served_shares, true_ctcvr
from pipelines.publish_registry import ARTIFACTS
from plumbing.atomic import write_json
from plumbing.config import dump_params, load_params
from plumbing.dates import shift_ds
from relate_sim.serving_tables import ServingTables


def parse_variant(spec: str) -> dict[str, object]:
    """'a.b=1,c.d=x' -> {'a.b': 1, 'c.d': 'x'} (values as YAML scalars)."""
    out = {}
    for item in filter(None, spec.split(",")):
        key, sep, value = item.partition("=")
        if not sep or "." not in key:
            raise SystemExit(f"--variants {spec!r}: expected section.key=value pairs, got {item!r}")
        out[key] = yaml.safe_load(value)
    return out


def variant_params(arm_dir: Path, overrides: dict[str, object], retrain: bool) -> dict:
    """The arm's params (keys newer than the run: today's values) with the overrides set."""
    params = load_params(arm_dir / "params.yaml")
    for name, values in load_params(Path("params.yaml")).items():
        if isinstance(values, dict) and isinstance(params.get(name), dict):
            params[name] = {**values, **params[name]}
    if retrain:
        params["training"]["mode"] = "full"  # the scratch project has no registry to continue from
    for key, value in overrides.items():
        *path, field = key.split(".")
        node = params
        for part in path:
            if not isinstance(node.get(part), dict):
                raise SystemExit(f"--variants {key}: {part!r} is not a section of {arm_dir / 'params.yaml'}")
            node = node[part]
        node[field] = value
    return params


def rebuild_tables(arm_dir: Path, version: str, ds: str, name: str, overrides: dict, retrain: bool,
                   work: Path) -> Path:
    """models/serving of `version` rebuilt with the overrides, in a scratch project over the arm's
    data (its prompt split copied: the grpo stage rewrites it)."""
    project = work / f"{version}-{name}"
    (project / "models").mkdir(parents=True)
    (project / "data").mkdir()
    for child in (arm_dir / "data").iterdir():
        if child.name == "prompts":
            shutil.copytree(child, project / "data" / child.name)
        else:
            (project / "data" / child.name).symlink_to(child.resolve())
    for artifact, target in ARTIFACTS.items():
        source = arm_dir / "registry" / version / artifact
        if source.is_dir() and not (retrain and artifact == "policy"):
            (project / target).symlink_to(source.resolve())
    (project / "params.yaml").write_text(dump_params(variant_params(arm_dir, overrides, retrain)))
    for stage in (["grpo"] if retrain else []) + ["serving_tables"]:
        subprocess.run([sys.executable, "-m", f"pipelines.{stage}", "--params", str(project / "params.yaml"),
                        "--ds", ds], check=True, cwd=project)
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


def one_day(run: Path, ds: str, variants: list[str], retrain: bool, work: Path) -> dict:
    """The day's logging baseline, the published tables and each variant's rebuilt tables, scored."""
    arm_dir = run / "daily_warm"
    records = json.loads((arm_dir / "loop" / "records.json").read_text())
    version = next((r.get("served_by") for r in records if r["ds"] == ds), None)
    if not version:
        raise SystemExit(f"{arm_dir}: no champion served {ds}")
    logging = reproduce(run / "logging", ds)
    base = float(true_ctcvr(logging, logging.sim, logging.creative,
                            earlier_exposures(logging, logging.creative, True), False).mean())
    published = score(reproduce(arm_dir, ds))
    day = {"champion": version, "logging_as_served": base, "published": published, "variants": {}}
    for number, spec in enumerate(variants):
        folder = rebuild_tables(arm_dir, version, shift_ds(ds, -1), f"v{number}", parse_variant(spec), retrain, work)
        res = score(reproduce(arm_dir, ds, ServingTables.load(folder, version)))
        res.update({f"uplift_{k}_vs_logging": res[k] / base - 1 for k in ("as_served", "at_equilibrium")})
        day["variants"][spec] = res
        print(f"{ds} {spec}{' (retrained)' if retrain else ''}: top phrase share {res['top_phrase_share']:.2f}; true CTCVR as served "
              f"{res['uplift_as_served_vs_logging']:+.1%}, at equilibrium {res['uplift_at_equilibrium_vs_logging']:+.1%} "
              f"over logging (published tables as served: {published['as_served'] / base - 1:+.1%})", flush=True)
    return day


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", type=Path, default=Path("runs/loop_params"))
    ap.add_argument("--days", nargs="+", default=["2026-01-22"])
    ap.add_argument("--variants", nargs="+", required=True,
                    help="comma-separated section.key=value overrides, one string per variant")
    ap.add_argument("--retrain", action="store_true", help="train the policy afresh (grpo stage) per variant")
    ap.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temporary one)")
    ap.add_argument("--keep", action="store_true", help="keep the scratch projects")
    ap.add_argument("--out", type=Path, default=Path("metrics/serving_counterfactual.json"))
    args = ap.parse_args(argv)
    work = args.work or Path(tempfile.mkdtemp(prefix="serving_counterfactual-"))
    try:
        out = {"run": str(args.run), "variants": args.variants, "retrain": args.retrain,
               "days": {ds: one_day(args.run, ds, args.variants, args.retrain, work) for ds in args.days}}
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    write_json(args.out, out)
    print(f"-> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
