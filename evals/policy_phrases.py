"""How much a published policy leans on one phrase: the most common word bigram of texts it samples.

    python -m evals.policy_phrases registry/2026-01-16-6efedc9209 other/registry/2026-01-16-3193def022 [--prompts 200]

For each registry version it samples texts from its SFT model (`sft/`) and its RELATE policy
(`policy/`) as the evaluate stage samples them (the `evaluate:` section's texts per prompt,
temperature, top-p and length; `--seed` for the draws), on the first `--prompts` (vertical,
keyword) prompts of the first version's serving pools, and prints the bigram carried by the
largest share of them (the closed loop's `search_top_bigram`, counted per text instead of per
impression). Two closed-loop arms' champions of one day, side by side, show whether a policy's
lean on its hook comes from its SFT model or from GRPO. Reads only published artifacts.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import pandas as pd

from pipelines.closed_loop_metrics import top_bigram
from pipelines.evaluate_config import EvaluateConfig, generate_candidates
from plumbing.config import load_config

ARTIFACTS = ("sft", "policy")


def sampled_top_bigram(policy_dir: Path, prompt_rows: list[dict], cfg: EvaluateConfig) -> dict:
    """The most common word bigram of the texts sampled from a saved policy on `prompt_rows`, and its share."""
    texts = [t for group in generate_candidates(policy_dir, prompt_rows, cfg).values() for t in group]
    return {**(top_bigram([(t, 1, True) for t in texts]) or {"bigram": None, "share": 0.0}), "texts": len(texts)}


def pool_prompts(version_dir: Path, limit: int) -> list[dict]:
    """The first `limit` (vertical, keyword) prompts of a version's serving pools, with a prompt_id each."""
    pools = pd.read_parquet(version_dir / "serving" / "prompt_pools.parquet", columns=["vertical", "keyword"])
    rows = pools.drop_duplicates().head(limit).to_dict("records")
    return [{**r, "prompt_id": f"{r['vertical']}|{r['keyword']}"} for r in rows]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("versions", type=Path, nargs="+", help="registry version folders")
    ap.add_argument("--prompts", type=int, default=200)
    ap.add_argument("--seed", type=int, default=1, help="the sampling seed")
    ap.add_argument("--params", type=Path, default=Path("params.yaml"))
    args = ap.parse_args(argv)
    cfg = dataclasses.replace(load_config(EvaluateConfig, "evaluate", args.params), generation_seed=args.seed)
    missing = [str(v / a) for v in args.versions for a in ARTIFACTS if not (v / a).is_dir()]
    if missing:
        raise SystemExit(f"not a published policy: {', '.join(missing)}")
    rows = pool_prompts(args.versions[0], args.prompts)
    for version in args.versions:
        for artifact in ARTIFACTS:
            got = sampled_top_bigram(version / artifact, rows, cfg)
            print(json.dumps({"version": str(version), "artifact": artifact, **got}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
