"""Generate ad texts with a saved policy: `python -m pipelines.generate --vertical travel --keyword "cheap flights"`.

Prints one JSON line per prompt: {vertical, keyword, prompt, texts}. Prompts come from
--vertical/--keyword, or from a JSONL file of {vertical, keyword} rows (e.g. the held-out
data/prompts/eval.jsonl). With --pool-from K the policy samples K texts and `texts` is the
serving pool of -n of them that the evaluate stage serves (`relate_models/serving.py`:
compliant, most new bigrams, the learned CTCVR weighted by --pool-ctcvr-weight, default the
params file's serving.pool_ctcvr_weight); it reads models/ctcvr and the curated text_stats,
like the rewards do.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from plumbing.cli import StageContext, run_stage
from plumbing.errors import ConfigError, MissingArtifact
from plumbing.logs import get_logger
from plumbing.paths import CTCVR_DIR, RELATE_DIR

log = get_logger("generate")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--policy", default=str(RELATE_DIR), help="saved policy directory (default models/relate)")
    parser.add_argument("--vertical")
    parser.add_argument("--keyword")
    parser.add_argument("--prompts", help="JSONL file of {vertical, keyword} rows")
    parser.add_argument("-n", "--num", type=int, default=4, help="texts per prompt")
    parser.add_argument("--temperature", type=float, default=1.0, help="0 = greedy")
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--max-new-tokens", type=int, default=24)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--pool-from", type=int, default=0, help="sample this many and print the serving pool")
    parser.add_argument("--pool-ctcvr-weight", type=float, default=None,
                        help="default: the params file's serving.pool_ctcvr_weight")


def main(argv: list[str] | None = None) -> int:
    return run_stage("generate", __doc__, run, argv, ds=None, add_arguments=add_arguments)


def run(ctx: StageContext) -> None:
    """Sample (and with --pool-from, pool) texts for each prompt; print them as JSON lines."""
    from relate_models.policy import generate, load_policy, policy_prompts, prompt_text

    args = ctx.args
    rows = _prompt_rows(args)
    if args.num < 1 or args.max_new_tokens < 1 or args.temperature < 0 or not 0 < args.top_p <= 1:
        raise ConfigError("need --num >= 1, --max-new-tokens >= 1, --temperature >= 0, 0 < --top-p <= 1")
    if args.pool_from and (args.pool_from < args.num or (args.pool_ctcvr_weight or 0) < 0):
        raise ConfigError("need --pool-from >= --num and --pool-ctcvr-weight >= 0")
    model, tokenizer = load_policy(args.policy)
    prompts = [prompt_text(r["vertical"], r["keyword"]) for r in rows]
    texts = generate(model, tokenizer, policy_prompts(args.policy, tokenizer, rows), n=args.pool_from or args.num, max_new_tokens=args.max_new_tokens,
                     temperature=args.temperature, top_p=args.top_p, seed=args.seed)
    if args.pool_from:
        texts = _serving_pools(ctx, rows, prompts, texts)
    for row, prompt, group in zip(rows, prompts, texts):
        print(json.dumps({"vertical": row["vertical"], "keyword": row["keyword"], "prompt": prompt, "texts": group}))


def _serving_pools(ctx: StageContext, rows: list[dict], prompts: list[str], texts: list[list[str]]) -> list[list[str]]:
    """Each prompt's serving pool of --num texts, as the evaluate stage picks it."""
    from relate_models.ctcvr import CTCVRScorer
    from relate_models.serving import ServingConfig, learned_rewards, serving_pools

    weight = ctx.args.pool_ctcvr_weight
    if weight is None:
        weight = ctx.config(ServingConfig, "serving").pool_ctcvr_weight
    rewards = learned_rewards(CTCVRScorer.load(CTCVR_DIR), ctx.params, ctx.curated)
    keyed = [{**row, "prompt": prompt, "prompt_id": str(i)} for i, (row, prompt) in enumerate(zip(rows, prompts))]
    pools, unpooled = serving_pools({r["prompt_id"]: group for r, group in zip(keyed, texts)}, keyed, rewards,
                                    ctx.args.num, weight)
    if unpooled:
        log.warning("no compliant sample for %d prompt(s): printing plain samples for them", len(unpooled))
    return [pools[r["prompt_id"]] for r in keyed]


def _prompt_rows(args) -> list[dict]:
    if args.prompts:
        return _prompts_file(Path(args.prompts))
    if not args.vertical or not args.keyword:
        raise ConfigError("give --vertical and --keyword, or --prompts FILE")
    return [{"vertical": args.vertical, "keyword": args.keyword}]


def _prompts_file(path: Path) -> list[dict]:
    """The {vertical, keyword} rows of a JSONL file; a bad line is named by its number."""
    if not path.is_file():
        raise MissingArtifact(f"--prompts: no file {path}")
    rows = []
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise ConfigError(f"--prompts {path}:{i}: not JSON ({err})") from None
        if not isinstance(row, dict) or not all(isinstance(row.get(k), str) for k in ("vertical", "keyword")):
            raise ConfigError(f"--prompts {path}:{i}: need string fields vertical and keyword")
        rows.append(row)
    return rows


if __name__ == "__main__":
    sys.exit(main())
