"""Stage `serving_tables`: the creatives an ad server would rotate if this run's models went live.

    python -m pipelines.serving_tables [--params params.yaml] [--ds YYYY-MM-DD]

Writes models/serving/ (plumbing.serving_schema), which publish ships as the `serving` artifact
and the simulator serves on the days after (relate_sim/champion.py):
- text_pools.parquet: for every (ad_id, keyword) with search traffic in the curated logs up to
  --ds, the serving pool of the ad's (vertical, keyword) prompt: `serving.pool_candidates`
  samples of the RELATE policy, `evaluate.texts_per_prompt` of them kept by
  relate_models.serving (the pool the evaluate stage's `relate` arm serves, same generation
  settings); `score` is the learned CTCVR reward of the text (not the truth);
- combos.parquet: the combination generator's top-k per ad (models/combo_policy/serving.parquet);
- prompt_pools.parquet: each prompt's pool once (prompt_id, vertical, keyword, rank, text, score,
  pooled), for the served (vertical, keyword) prompts and the evaluate stage's held-out prompts
  (data/prompts/eval.jsonl): the policy is sampled once a day, here; the evaluate stage's `relate`
  arm serves these pools, and publish's re-scoring of a champion serves its published ones.
Reads only curated logs and this run's models, never the simulator.
"""
from __future__ import annotations

import sys

import pandas as pd
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from pipelines.evaluate_config import EVAL_PROMPTS, EvaluateConfig, generate_candidates, load_prompts
from plumbing import atomic
from plumbing.cli import StageContext, run_stage
from plumbing.errors import DataError, MissingArtifact
from plumbing.logs import get_logger
from plumbing.paths import COMBO_POLICY_DIR, CTCVR_DIR, RELATE_DIR, SERVING_DIR
from plumbing.runtime import limit_torch_threads
from plumbing.serving_schema import (
    COMBO_SCHEMA,
    COMBOS_FILE,
    PROMPT_POOL_SCHEMA,
    PROMPT_POOLS_FILE,
    TEXT_POOL_SCHEMA,
    TEXT_POOLS_FILE,
    validate,
)
from relate_models.rewards import group_kwargs
from relate_models.serving import ServingConfig, learned_rewards, serving_pools

log = get_logger(__name__)


def main(argv: list[str] | None = None) -> int:
    return run_stage("serving_tables", __doc__, run, argv)


def run(ctx: StageContext) -> None:
    """Pools for every served (ad, keyword) and held-out prompt, the generator's top-k per ad, written as one folder."""
    from relate_models.ctcvr import CTCVRScorer
    from relate_models.grpo_trainer import GRPOStageConfig

    cfg = ctx.config(EvaluateConfig, "evaluate")
    limit_torch_threads(cfg.torch_threads)  # as evaluate samples
    serving = ctx.config(ServingConfig, "serving")
    serving.check_pool_size(cfg.texts_per_prompt, "evaluate.texts_per_prompt")
    ad_keywords = served_ad_keywords(ctx.curated.table("labeled_impressions"))
    held_out = load_prompts()
    prompts = pool_prompts(ad_keywords, held_out, ctx.config(GRPOStageConfig, "grpo").user_segment)
    rewards = learned_rewards(CTCVRScorer.load(CTCVR_DIR), ctx.params, ctx.curated)
    pools, unpooled = sample_pools(prompts, cfg, serving, rewards)
    scores = ctcvr_scores(prompts, pools, rewards)
    text_pools = text_pool_table(ad_keywords, pools, scores)
    plain = set(unpooled) if serving.pool_candidates else set(pools)
    prompt_pools = prompt_pool_table(prompts, pools, scores, plain)
    combos = combo_table()
    with atomic.directory(SERVING_DIR) as out:
        pq.write_table(text_pools, out / TEXT_POOLS_FILE)
        pq.write_table(combos, out / COMBOS_FILE)
        pq.write_table(prompt_pools, out / PROMPT_POOLS_FILE)
    log.info("serving tables: %d (ad, keyword) pools, %d texts; %d prompts' pools (%d served, %d held out); "
             "%d ads' top-%d combinations -> %s", len(ad_keywords), text_pools.num_rows, len(prompts),
             len(set(zip(ad_keywords["vertical"], ad_keywords["keyword"]))), len(held_out),
             len(set(combos.column("ad_id").to_pylist())), max(combos.column("rank").to_pylist(), default=0),
             SERVING_DIR)


def served_ad_keywords(labeled_dir) -> pd.DataFrame:
    """Distinct (ad_id, vertical, keyword) of the logged search impressions, sorted."""
    if not labeled_dir.is_dir():
        raise MissingArtifact(f"no labeled_impressions under {labeled_dir}; run ingest first")
    dataset = pads.dataset(str(labeled_dir), format="parquet", partitioning="hive")
    frame = dataset.to_table(columns=["ad_id", "vertical", "keyword"],
                             filter=pads.field("placement") == "search").to_pandas()
    frame = frame.dropna().drop_duplicates().sort_values(["ad_id", "keyword"], kind="stable")
    if frame.empty:
        raise DataError(f"{labeled_dir}: no search impression with ad_id, vertical and keyword")
    return frame.reset_index(drop=True)


def pool_prompts(ad_keywords: pd.DataFrame, held_out: list[dict], default_segment: str | None) -> list[dict]:
    """One prompt row per (vertical, keyword), served or held out, sorted by prompt_id.

    A held-out row is the evaluate stage's (its user_segment is the CTCVR context the pool scores
    with), so evaluate's `relate` arm serves the very pool the ad server serves; a served-only row
    scores with the grpo default segment, as the rewards would without one.
    """
    rows = {f"{v}|{k}": {"prompt_id": f"{v}|{k}", "vertical": v, "keyword": k, "prompt": f"{v} | {k} |",
                         "user_segment": default_segment}
            for v, k in set(zip(ad_keywords["vertical"], ad_keywords["keyword"]))}
    for row in held_out:
        missing = [f for f in ("prompt_id", "vertical", "keyword", "prompt", "user_segment") if f not in row]
        if missing:
            raise DataError(f"{EVAL_PROMPTS}: held-out prompt {row.get('prompt_id')!r} lacks {', '.join(missing)}")
        rows[row["prompt_id"]] = {k: row[k] for k in ("prompt_id", "vertical", "keyword", "prompt", "user_segment")}
    return [rows[p] for p in sorted(rows)]


def sample_pools(prompts: list[dict], cfg: EvaluateConfig, serving: ServingConfig,
                 rewards) -> tuple[dict[str, list[str]], list[str]]:
    """(prompt_id -> the RELATE policy's serving pool, or its plain samples when serving.pool_candidates
    is 0; the prompts whose every candidate violated and so serve plain samples), sampled in one pass."""
    candidates = generate_candidates(RELATE_DIR, prompts, cfg, n=serving.pool_candidates or cfg.texts_per_prompt)
    if not serving.pool_candidates:
        return candidates, []
    pools, unpooled = serving_pools(candidates, prompts, rewards, cfg.texts_per_prompt, serving.pool_ctcvr_weight)
    if unpooled:
        log.warning("%d prompt(s) had no compliant candidate and serve plain samples: %s", len(unpooled),
                    unpooled[:5])
    return pools, unpooled


def text_pool_table(ad_keywords: pd.DataFrame, pools: dict[str, list[str]],
                    scores: dict[str, list[float]]) -> pa.Table:
    """The serving pool of each (ad, keyword): its (vertical, keyword) prompt's pool, repeated for each ad."""
    rows = []
    for ad_id, vertical, keyword in ad_keywords[["ad_id", "vertical", "keyword"]].itertuples(index=False):
        pid = f"{vertical}|{keyword}"
        for rank, text in enumerate(pools[pid], start=1):
            rows.append({"ad_id": ad_id, "keyword": keyword, "text": text, "score": scores[pid][rank - 1],
                         "rank": rank})
    return validate(pa.Table.from_pylist(rows, schema=TEXT_POOL_SCHEMA), TEXT_POOL_SCHEMA, TEXT_POOLS_FILE)


def prompt_pool_table(prompts: list[dict], pools: dict[str, list[str]], scores: dict[str, list[float]],
                      plain: set[str]) -> pa.Table:
    """Every prompt's pool, once (what evaluate and publish's champion re-scoring serve)."""
    rows = [{"prompt_id": p["prompt_id"], "vertical": p["vertical"], "keyword": p["keyword"], "rank": rank,
             "text": text, "score": scores[p["prompt_id"]][rank - 1], "pooled": p["prompt_id"] not in plain}
            for p in prompts for rank, text in enumerate(pools[p["prompt_id"]], start=1)]
    return validate(pa.Table.from_pylist(rows, schema=PROMPT_POOL_SCHEMA), PROMPT_POOL_SCHEMA, PROMPT_POOLS_FILE)


def ctcvr_scores(prompts: list[dict], pools: dict[str, list[str]], rewards) -> dict[str, list[float]]:
    """prompt_id -> the learned CTCVR reward of each pooled text, in pool order."""
    ctcvr = next(r for r in rewards if r.name == "ctcvr")
    flat, kwargs = group_kwargs(prompts, [pools[p["prompt_id"]] for p in prompts])
    values, out, start = ctcvr.score(flat, **kwargs), {}, 0
    for p in prompts:
        size = len(pools[p["prompt_id"]])
        out[p["prompt_id"]] = [float(v) for v in values[start:start + size]]
        start += size
    return out


def combo_table() -> pa.Table:
    """The combination generator's top-k per ad, in the serving schema."""
    path = COMBO_POLICY_DIR / "serving.parquet"
    if not path.is_file():
        raise MissingArtifact(f"missing {path} (run pipelines.combo_policy first)")
    return validate(pq.read_table(path), COMBO_SCHEMA, str(path))


if __name__ == "__main__":
    sys.exit(main())
