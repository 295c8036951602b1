"""GRPO settings x seeds, each scored by the evaluate stage's simulated A/B against SFT; prints a table.

    python bench/grpo_seeds.py --seeds 11 12 13 [--set max_steps=150 --set beta=0.04] [--label NAME]

Each run trains RELATE from the default models/sft with the `grpo:` params section, the
seed and the `--set` overrides (key=JSON value, e.g. rewards='{"ctcvr": 1, ...}'), writes the
policy under --out (not models/), and serves it on the same held-out traffic as
`pipelines.evaluate` (same prompts, draws and oracle). One JSON line per run is appended to
--results. GRPO's outcome varies a lot with the seed (+24% to +44% true uplift over three
seeds of one setting): compare settings over several seeds, never one.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipelines import evaluate, evaluate_harness, grpo  # noqa: E402
from plumbing.config import ConfigError, load_config  # noqa: E402
from plumbing.paths import SFT_DIR  # noqa: E402
from relate_models.grpo_trainer import GRPOStageConfig  # noqa: E402


def parse_override(text: str) -> tuple[str, object]:
    key, sep, value = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"--set {text!r}: expected key=JSON")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError as err:
        raise argparse.ArgumentTypeError(f"--set {key}: value is not JSON ({err})") from None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[11, 12, 13])
    parser.add_argument("--set", type=parse_override, action="append", default=[], dest="overrides")
    parser.add_argument("--label", default="run", help="name of this setting in the table and results")
    parser.add_argument("--out", type=Path, default=Path("/tmp/relate_grpo_seeds"), help="policies go here")
    parser.add_argument("--results", type=Path, default=Path("/tmp/relate_grpo_seeds/results.jsonl"))
    parser.add_argument("--params", default=None)
    args = parser.parse_args(argv)

    try:  # the --set values are checked as the params file's are, before any run
        configs = {seed: load_config(GRPOStageConfig, "grpo", args.params,
                                     overrides={**dict(args.overrides), "seed": seed}) for seed in args.seeds}
    except ConfigError as err:
        parser.error(f"--set: {err}")
    eval_cfg = load_config(evaluate.EvaluateConfig, "evaluate", args.params)
    harness = evaluate_harness.Harness.build(eval_cfg, args.params)
    sft = harness.sampled_arm("sft", evaluate_harness.generate_candidates(SFT_DIR, harness.prompts, eval_cfg))
    args.results.parent.mkdir(parents=True, exist_ok=True)
    rows = []
    for seed in args.seeds:
        cfg = configs[seed]
        out = args.out / f"{args.label}_s{seed}"
        started = time.monotonic()
        grpo.train_relate(cfg, output_dir=out, metrics_path=out / "grpo_metrics.json", plots_dir=out / "plots",
                          prompts_dir=None)
        arm = harness.sampled_arm(args.label, evaluate_harness.generate_candidates(out, harness.prompts, eval_cfg))
        m = harness.summarize_all({"sft": sft, args.label: arm})[args.label]
        row = {"label": args.label, "seed": seed, "overrides": dict(args.overrides),
               "true_ctcvr_uplift": m["true_ctcvr_uplift_vs_sft"], "learned_ctcvr_uplift": m["learned_ctcvr_uplift_vs_sft"],
               "compliance": m["compliance_rate"], "distinct_2": m["distinct_2"],
               "seconds": round(time.monotonic() - started, 1)}
        with args.results.open("a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")
        rows.append(row)
        print(f"{args.label} seed {seed}: true uplift {row['true_ctcvr_uplift']:+.1%}, learned "
              f"{row['learned_ctcvr_uplift']:+.1%}, compliance {row['compliance']:.2%}, distinct-2 "
              f"{row['distinct_2']:.3f} ({row['seconds']} s)", flush=True)
    mean = {k: sum(r[k] for r in rows) / len(rows) for k in ("true_ctcvr_uplift", "compliance", "distinct_2")}
    print(f"{args.label} mean over seeds {args.seeds}: true uplift {mean['true_ctcvr_uplift']:+.1%}, compliance "
          f"{mean['compliance']:.2%}, distinct-2 {mean['distinct_2']:.3f} (SFT distinct-2 "
          f"{harness.summarize_all({'sft': sft})['sft']['distinct_2']:.3f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
