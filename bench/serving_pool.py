"""RELATE's serving pool over policies and settings, scored by the evaluate stage's simulated A/B; prints a table.

    python bench/serving_pool.py models/relate /tmp/relate_grpo_seeds/default_s12 \\
        [--candidates 32] [--weights 0 0.01 0.1 0.3] [--with-sft]

For each policy directory: the policy's own N samples (as `relate_sampled`), then the pool
(`relate_models/serving.py`) of --candidates samples at each CTCVR weight, all on the same
held-out traffic, draws and oracle as `pipelines.evaluate`. --with-sft adds SFT through the
same pools (what the pool does without GRPO). Policies of other GRPO seeds come from
`bench/grpo_seeds.py`.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipelines.evaluate import EvaluateConfig  # noqa: E402
from pipelines.evaluate_harness import Harness, generate_candidates  # noqa: E402
from plumbing.config import load_config  # noqa: E402
from plumbing.paths import SFT_DIR  # noqa: E402
from relate_models.serving import ServingConfig  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("policies", nargs="+", type=Path)
    parser.add_argument("--candidates", type=int, default=None, help="samples per prompt (default: params.yaml)")
    parser.add_argument("--weights", type=float, nargs="+", default=[0.0, 0.01, 0.1, 0.3])
    parser.add_argument("--with-sft", action="store_true")
    parser.add_argument("--params", default=None)
    args = parser.parse_args(argv)
    missing = [str(p) for p in args.policies if not (p / "config.json").is_file()]
    if missing:
        parser.error(f"not a saved policy (no config.json): {missing}")

    base = load_config(EvaluateConfig, "evaluate", args.params)
    serving = load_config(ServingConfig, "serving", args.params)
    if args.candidates is not None:
        serving = dataclasses.replace(serving, pool_candidates=args.candidates)
    harness = Harness.build(base, args.params, serving=serving)
    outcomes = {"sft": harness.sampled_arm("sft", generate_candidates(SFT_DIR, harness.prompts, base))}
    policies = [*args.policies, *([SFT_DIR] if args.with_sft else [])]
    for policy in policies:
        if policy != SFT_DIR:
            outcomes[f"{policy.name} sampled"] = harness.sampled_arm(
                policy.name, generate_candidates(policy, harness.prompts, base))
        for weight in args.weights:
            # dataclasses.replace re-runs the config's validation
            harness.serving = dataclasses.replace(serving, pool_ctcvr_weight=weight)
            outcomes[f"{policy.name} pool w={weight:g}"] = harness.served_arm(policy.name, policy)
    arms = harness.summarize_all(outcomes)
    print(f"\n{serving.pool_candidates} candidates per prompt, pool of {base.texts_per_prompt}, "
          f"{base.n_impressions:,} impressions per arm\n")
    print("| arm | true CTCVR uplift vs SFT | compliance | distinct-2 | self-BLEU |")
    print("|---|---|---|---|---|")
    for name, m in arms.items():
        print(f"| {name} | {m['true_ctcvr_uplift_vs_sft']:+.1%} | {m['compliance_rate']:.2%} | "
              f"{m['distinct_2']:.3f} | {m['self_bleu']:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
