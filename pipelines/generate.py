"""Generate ad texts with a saved policy: `python -m pipelines.generate --vertical travel --keyword "cheap flights"`.

Prints one JSON line per prompt: {vertical, keyword, prompt, texts}. Prompts come from
--vertical/--keyword, or from a JSONL file of {vertical, keyword} rows (e.g. the held-out
data/prompts/eval.jsonl).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from pipelines.logs import get_logger
from pipelines.paths import MODELS

log = get_logger("generate")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--policy", default=str(MODELS / "relate"), help="saved policy directory (default models/relate)")
    parser.add_argument("--vertical")
    parser.add_argument("--keyword")
    parser.add_argument("--prompts", help="JSONL file of {vertical, keyword} rows")
    parser.add_argument("-n", "--num", type=int, default=4, help="texts per prompt")
    parser.add_argument("--temperature", type=float, default=1.0, help="0 = greedy")
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--max-new-tokens", type=int, default=24)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        rows = _prompt_rows(args)
        if args.num < 1 or args.max_new_tokens < 1 or args.temperature < 0 or not 0 < args.top_p <= 1:
            raise ValueError("need --num >= 1, --max-new-tokens >= 1, --temperature >= 0, 0 < --top-p <= 1")
        from relate_models.policy import generate, load_policy, prompt_text

        model, tokenizer = load_policy(args.policy)
        prompts = [prompt_text(r["vertical"], r["keyword"]) for r in rows]
        texts = generate(model, tokenizer, prompts, n=args.num, max_new_tokens=args.max_new_tokens,
                         temperature=args.temperature, top_p=args.top_p, seed=args.seed)
        for row, prompt, group in zip(rows, prompts, texts):
            print(json.dumps({"vertical": row["vertical"], "keyword": row["keyword"], "prompt": prompt, "texts": group}))
        return 0
    except (ValueError, FileNotFoundError) as err:
        log.error("generate failed: %s", err)
        return 2


def _prompt_rows(args) -> list[dict]:
    if args.prompts:
        path = Path(args.prompts)
        if not path.is_file():
            raise FileNotFoundError(f"--prompts: no file {path}")
        rows = []
        for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"--prompts {path}:{i}: not JSON ({err})") from None
            if not isinstance(row, dict) or not all(isinstance(row.get(k), str) for k in ("vertical", "keyword")):
                raise ValueError(f"--prompts {path}:{i}: need string fields vertical and keyword")
            rows.append(row)
        return rows
    if not args.vertical or not args.keyword:
        raise ValueError("give --vertical and --keyword, or --prompts FILE")
    return [{"vertical": args.vertical, "keyword": args.keyword}]


if __name__ == "__main__":
    sys.exit(main())
