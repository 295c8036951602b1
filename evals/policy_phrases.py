"""How much a published policy leans on one phrase: the most common word bigram of texts it samples.

    python -m evals.policy_phrases registry/2026-01-16-6efedc9209 other/registry/2026-01-16-3193def022 [--prompts 200]

For each registry version it samples `--per-prompt` texts per prompt from its SFT model (`sft/`) and
its RELATE policy (`policy/`), at the serving temperature and top-p, on the first `--prompts`
(vertical, keyword) prompts of the first version's serving pools, and prints the bigram carried by
the largest share of them (the closed loop's `search_top_bigram`, counted per text instead of per
impression). Two closed-loop arms' champions of one day, side by side, show whether a policy's
lean on its hook comes from its SFT model or from GRPO. Reads only published artifacts.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pandas as pd

from pipelines.closed_loop_metrics import top_bigram
from relate_models.policy import generate_texts

ARTIFACTS = ("sft", "policy")


def sampled_top_bigram(policy_dir: Path, prompt_rows: list[dict], per_prompt: int, seed: int, top_p: float) -> dict:
    """The most common word bigram of `per_prompt` texts per prompt sampled from a saved policy, and its share."""
    texts = [t for row in generate_texts(policy_dir, prompt_rows, n=per_prompt, top_p=top_p, seed=seed) for t in row]
    return {**(top_bigram([(t, 1, True) for t in texts]) or {"bigram": None, "share": 0.0}), "texts": len(texts)}


def pool_prompts(version_dir: Path, limit: int) -> list[dict]:
    """The first `limit` (vertical, keyword) prompts of a version's serving pools."""
    pools = pd.read_parquet(version_dir / "serving" / "prompt_pools.parquet", columns=["vertical", "keyword"])
    return pools.drop_duplicates().head(limit).to_dict("records")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("versions", type=Path, nargs="+", help="registry version folders")
    ap.add_argument("--prompts", type=int, default=200)
    ap.add_argument("--per-prompt", type=int, default=8)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--top-p", type=float, default=0.95, help="the serving section's top_p")
    args = ap.parse_args(argv)
    missing = [str(v / a) for v in args.versions for a in ARTIFACTS if not (v / a).is_dir()]
    if missing:
        raise SystemExit(f"not a published policy: {', '.join(missing)}")
    rows = pool_prompts(args.versions[0], args.prompts)
    for version in args.versions:
        for artifact in ARTIFACTS:
            got = sampled_top_bigram(version / artifact, rows, args.per_prompt, args.seed, args.top_p)
            print(json.dumps({"version": str(version), "artifact": artifact, **got}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
