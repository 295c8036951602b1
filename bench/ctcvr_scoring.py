"""Throughput of the CTCVR scoring API (the GRPO reward): prints texts/s, writes nothing.

    python bench/ctcvr_scoring.py [--model models/ctcvr] [--batch 256] [--rounds 40] [--threads 1]

Scores GRPO-sized batches of realistic inputs: logged ad texts with their contexts from
the newest curated partition when there is one, else synthetic ad-like texts.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from plumbing.paths import curated, partitions  # noqa: E402
from relate_models.ctcvr import CTCVRScorer  # noqa: E402

PHRASES = ["Shop", "cheap flights", "Free shipping", "Book today", "Top rated", "Compare online", "Flexible plans",
           "Get a quote", "Save 20%", "Limited offer", "Trusted by millions", "jeans sale", "low rates"]


def realistic_batch(n: int, seed: int = 0) -> tuple[list[str], list[dict]]:
    import pyarrow.parquet as pq

    table_dir = curated("labeled_impressions")
    days = partitions(table_dir)
    if days:
        frame = pq.read_table(table_dir / f"dt={days[-1]}", columns=["ad_text", "keyword", "vertical", "position",
                                                                      "user_segment", "placement"]).to_pandas()
        frame = frame[frame["placement"] == "search"].sample(n, replace=True, random_state=seed)
        return frame["ad_text"].tolist(), frame.drop(columns=["ad_text", "placement"]).to_dict("records")
    rng = np.random.default_rng(seed)
    texts = [". ".join(rng.choice(PHRASES, size=rng.integers(3, 6))) for _ in range(n)]
    contexts = [{"keyword": "cheap flights", "vertical": "travel", "position": int(rng.integers(1, 5)),
                 "user_segment": "students"} for _ in range(n)]
    return texts, contexts


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="models/ctcvr")
    parser.add_argument("--batch", type=int, default=256, help="texts per score() call (GRPO: prompts x generations)")
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    try:
        scorer = CTCVRScorer.load(args.model)
    except FileNotFoundError as err:
        print(f"bench: {err}", file=sys.stderr)
        return 2
    texts, contexts = realistic_batch(args.batch * args.rounds)
    scorer.score(texts[: args.batch], contexts[: args.batch])  # warm-up
    start = time.perf_counter()
    for r in range(args.rounds):
        s = slice(r * args.batch, (r + 1) * args.batch)
        scorer.score(texts[s], contexts[s])
    seconds = time.perf_counter() - start
    n = args.batch * args.rounds
    print(f"ctcvr scoring: {n / seconds:,.0f} texts/s ({n} texts in batches of {args.batch}, "
          f"{args.threads} threads, mean text {np.mean([len(t) for t in texts]):.0f} chars)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
