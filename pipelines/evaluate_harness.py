"""The simulated A/B harness every text-policy evaluation shares: traffic, arms, outcomes, per-arm statistics.

Traffic: real search contexts (ad_id, keyword, query, user_segment, position, user_id) of
the held-out prompts, sampled from the curated logs. Every arm serves the same impressions
with the same random draws (common random numbers); outcomes come from the simulator's
ground truth (relate_sim.oracle) of the market as of the run's day (`Harness.eval_day`: its
--ds, else the newest curated partition), with fatigue on repeated exposures. Users: the evaluate
stage, the ablation ladder, publish's champion re-scoring (evaluate_champion) and bench/.
It reads the oracle, so it sits inside the honesty boundary; the statistics are
plumbing.metrics', the reports pipelines.ab_report's.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from pipelines.evaluate_config import EVAL_PROMPTS, EvaluateConfig, generate_candidates, load_prompts
from pipelines.publish_registry import read_json, tree_digest
from plumbing.atomic import write_json
from plumbing.config import load_config
from plumbing.errors import DataError, MissingArtifact
from plumbing.logs import Progress, get_logger
from plumbing.metrics import mean_ci, paired_uplift, wilson
from plumbing.paths import ALL_CURATED, CTCVR_DIR, DATA, SFT_DIR, CuratedReader
from plumbing.serving_schema import read_prompt_pools
from relate_models.serving import ServingConfig, learned_rewards, serving_pools

log = get_logger("evaluate")
CONTEXT_COLUMNS = ["impression_id", "user_id", "user_segment", "ad_id", "vertical", "keyword", "query", "position",
                   "ad_text"]  # ad_text: what served there (the `logged` arm)
SFT_TEXTS = DATA / "evaluate" / "sft_texts.json"  # the evaluate stage's SFT arm texts (publish reuses them)
KEY_FIELDS = ("vertical", "keyword", "query", "user_segment", "position")


# ------------------------------------------------------------------------------- traffic
def sample_contexts(prompts: Sequence[dict], n: int, seed: int, labeled_dir: Path) -> list[dict]:
    """`n` logged search impressions whose (vertical, keyword) is a held-out prompt, in random order.

    Each context: user_id, user_segment, ad_id, vertical, keyword, query, position, prompt_id,
    and ad_text, the text the logs show served on it. Sampled without replacement when the logs hold enough, else with.
    """
    import pyarrow.dataset as ds

    labeled_dir = Path(labeled_dir)
    if not labeled_dir.is_dir():
        raise MissingArtifact(f"no labeled_impressions under {labeled_dir}; run ingest first")
    dataset = ds.dataset(str(labeled_dir), format="parquet", partitioning="hive")
    missing = [c for c in CONTEXT_COLUMNS + ["placement"] if c not in dataset.schema.names]
    if missing:
        raise DataError(f"{labeled_dir}: columns {missing} missing")
    frame = dataset.to_table(columns=CONTEXT_COLUMNS, filter=ds.field("placement") == "search").to_pandas()
    frame = frame.dropna(subset=["user_id", "user_segment", "ad_id", "vertical", "keyword", "position", "ad_text"])
    prompt_of = {(r["vertical"], r["keyword"]): r["prompt_id"] for r in prompts}
    frame["prompt_id"] = [prompt_of.get((v, k)) for v, k in zip(frame["vertical"], frame["keyword"])]
    frame = frame[frame["prompt_id"].notna()]
    if frame.empty:
        raise DataError("no logged search impression matches a held-out prompt")
    # the dataset's row order is not guaranteed: sort so a seed picks the same impressions on every run
    frame = frame.sort_values("impression_id", kind="stable").reset_index(drop=True)
    rng = np.random.default_rng([seed, 1])
    rows = rng.choice(len(frame), size=n, replace=n > len(frame))
    frame = frame.iloc[rows].reset_index(drop=True)
    frame["query"] = frame["query"].fillna(frame["keyword"])
    frame["position"] = frame["position"].astype(int)
    return frame.drop(columns=["impression_id"]).to_dict("records")


def context_key(ctx: dict) -> tuple:
    """What the learned model sees of a request (and so what the two-stage ranker ranks for)."""
    return tuple(ctx[k] for k in KEY_FIELDS)


def scorer_context(ctx: dict) -> dict:
    return {"vertical": ctx["vertical"], "keyword": ctx["keyword"], "query": ctx["query"],
            "user_segment": ctx["user_segment"], "position": int(ctx["position"])}


def load_oracle(day: str | None = None):
    """The simulator's ground truth (relate_sim.oracle) of the market as of `day` (None: the day-0 world).

    A drifting market moves every day: a run scores against the day it is as of, never day 0."""
    from relate_sim.oracle import Oracle

    oracle = Oracle.load()
    if day is None:
        return oracle
    try:
        return oracle.as_of(day)
    except ValueError as err:  # a day before the world's start_date
        raise DataError(f"eval day {day}: {err}") from None


# ------------------------------------------------------------------------------- serving
def serve_sampled(candidates: dict[str, list[str]], contexts: Sequence[dict], draws: np.ndarray) -> list[str]:
    """One of the prompt's N texts per impression, picked by the shared uniform `draws` in [0, 1)."""
    return [candidates[c["prompt_id"]][int(u * len(candidates[c["prompt_id"]]))] for c, u in zip(contexts, draws)]


def serve_top_ranked(candidates: dict[str, list[str]], contexts: Sequence[dict], scorer,
                     by: str = "p_ctr") -> list[str]:
    """Per request context, the candidate the learned model ranks first by `by` (pCTR: two-stage)."""
    keys = sorted({(c["prompt_id"], context_key(c)) for c in contexts})
    texts, ctxs, owner = [], [], []
    for k, (prompt_id, key) in enumerate(keys):
        ctx = scorer_context(dict(zip(KEY_FIELDS, key)))
        for text in candidates[prompt_id]:
            texts.append(text)
            ctxs.append(ctx)
            owner.append(k)
    scores = scorer.score(texts, ctxs)[by]
    best: dict[int, tuple[float, str]] = {}
    for k, text, s in zip(owner, texts, scores.tolist()):
        if k not in best or s > best[k][0]:  # ties keep the first sampled text
            best[k] = (s, text)
    chosen = {key: best[k][1] for k, key in enumerate(keys)}
    return [chosen[(c["prompt_id"], context_key(c))] for c in contexts]


def learned_ctcvr(scorer, contexts: Sequence[dict], served: Sequence[str]) -> np.ndarray:
    """The learned reward model's pCTCVR of each served (context, text), scored once per unique pair."""
    pairs = sorted({(context_key(c), t) for c, t in zip(contexts, served)})
    index = {p: i for i, p in enumerate(pairs)}
    scores = scorer.score([t for _, t in pairs], [scorer_context(dict(zip(KEY_FIELDS, k))) for k, _ in pairs])["p_ctcvr"]
    return np.array([scores[index[(context_key(c), t)]] for c, t in zip(contexts, served)], dtype=float)


# -------------------------------------------------------------------------------- the A/B
@dataclass
class ArmOutcome:
    """Per-impression results of one arm (aligned with the shared contexts)."""

    name: str
    served: list[str]
    p_click: np.ndarray  # true click probability as served (fatigue applied; 0 for a violation)
    p_conv: np.ndarray  # true conversion probability given a click
    clicked: np.ndarray  # bool
    converted: np.ndarray  # bool
    compliant: np.ndarray  # bool
    repeat_exposures: int
    learned_ctcvr: np.ndarray | None = None
    unpooled_prompts: int | None = None  # pooled arms: prompts served plain samples (no compliant candidate)

    @property
    def true_ctcvr(self) -> np.ndarray:
        return self.p_click * self.p_conv


class ABTest:
    """A simulated A/B test over fixed contexts: every arm gets the same outcome draws."""

    def __init__(self, oracle, contexts: Sequence[dict], seed: int, fatigue: bool = True):
        self.oracle, self.contexts, self.fatigue = oracle, list(contexts), fatigue
        rng = np.random.default_rng([seed, 2])
        n = len(self.contexts)
        self.serve_draws = rng.random(n)  # which of N sampled texts an impression gets
        self.u_click, self.u_conv = rng.random(n), rng.random(n)

    def run(self, name: str, served: Sequence[str]) -> ArmOutcome:
        if len(served) != len(self.contexts):
            raise ValueError(f"arm {name}: {len(served)} texts for {len(self.contexts)} impressions")
        n = len(self.contexts)
        p_click, p_conv = np.zeros(n), np.zeros(n)
        compliant = np.zeros(n, dtype=bool)
        seen: dict[tuple, int] = {}
        repeats = 0
        progress = Progress(log, f"A/B arm {name}", n, every_s=30)
        for i, (ctx, text) in enumerate(zip(self.contexts, served)):
            earlier = 0
            if self.fatigue:
                key = (ctx["user_id"], self.oracle.analyze(text).signature)
                earlier = seen.get(key, 0)
                seen[key] = earlier + 1
                repeats += earlier > 0
            p_click[i], p_conv[i], compliant[i] = self.oracle.true_text_probs(ctx, text, exposures=earlier)
            progress.update()
        clicked = self.u_click < p_click
        converted = clicked & (self.u_conv < p_conv)
        return ArmOutcome(name, list(served), p_click, p_conv, clicked, converted, compliant, repeats)


# -------------------------------------------------------------------------------- per-arm statistics
def served_groups(outcome: ArmOutcome, contexts: Sequence[dict], per_prompt: int) -> tuple[list[str], list[list[str]]]:
    """(prompt ids, texts served on each prompt's first `per_prompt` impressions): the diversity sample.

    The same impressions for every arm, so the groups are the same size across arms.
    """
    groups: dict[str, list[str]] = {}
    for ctx, text in zip(contexts, outcome.served):
        group = groups.setdefault(ctx["prompt_id"], [])
        if len(group) < per_prompt:
            group.append(text)
    ids = sorted(g for g in groups if len(groups[g]) >= 2)
    return ids, [groups[g] for g in ids]


def outcome_rates(outcome: ArmOutcome) -> dict:
    """Counts, observed rates (Wilson 95%) and the true CTCVR (mean interval) of one arm."""
    n = len(outcome.served)
    clicks, conversions = int(outcome.clicked.sum()), int(outcome.converted.sum())
    compliant = int(outcome.compliant.sum())
    out: dict = {"impressions": n, "clicks": clicks, "conversions": conversions,
                 "violations": n - compliant, "repeat_exposures": outcome.repeat_exposures,
                 "unique_texts": len(set(outcome.served))}
    if outcome.unpooled_prompts is not None:
        out["unpooled_prompts"] = outcome.unpooled_prompts
    for name, (succ, trials) in {"ctr": (clicks, n), "cvr": (conversions, clicks), "ctcvr": (conversions, n),
                                 "compliance_rate": (compliant, n)}.items():
        est, lo, hi = wilson(succ, trials)
        out[name], out[f"{name}_ci95"] = est, [lo, hi]
    est, lo, hi = mean_ci(outcome.true_ctcvr)
    out["true_ctcvr"], out["true_ctcvr_ci95"] = est, [lo, hi]
    out["true_ctr"] = float(outcome.p_click.mean())
    out["true_cvr"] = float(outcome.true_ctcvr.sum() / max(outcome.p_click.sum(), 1e-12))
    return out


def uplifts(outcome: ArmOutcome, base: ArmOutcome) -> dict:
    """Paired uplifts against `base` (the SFT arm), and the learned reward's uplift beside the true one."""
    out: dict = {}
    up, lo, hi = paired_uplift(base.true_ctcvr, outcome.true_ctcvr)
    out["true_ctcvr_uplift_vs_sft"], out["true_ctcvr_uplift_vs_sft_ci95"] = up, [lo, hi]
    up, lo, hi = paired_uplift(base.converted, outcome.converted)
    out["ab_ctcvr_uplift_vs_sft"], out["ab_ctcvr_uplift_vs_sft_ci95"] = up, [lo, hi]
    up, lo, hi = paired_uplift(base.p_click, outcome.p_click)
    out["true_ctr_uplift_vs_sft"], out["true_ctr_uplift_vs_sft_ci95"] = up, [lo, hi]
    if outcome.learned_ctcvr is not None and base.learned_ctcvr is not None:
        learned_up = float(outcome.learned_ctcvr.mean() / base.learned_ctcvr.mean() - 1)
        out["learned_ctcvr_uplift_vs_sft"] = learned_up
        # the learned reward promising more than the world delivers: reward hacking
        out["reward_hacking_gap"] = learned_up - out["true_ctcvr_uplift_vs_sft"]
    return out


def logged_uplift(outcome: ArmOutcome, logged: ArmOutcome) -> dict:
    """The paired true CTCVR uplift over the texts the logs show served on the same impressions (the incumbent)."""
    up, lo, hi = paired_uplift(logged.true_ctcvr, outcome.true_ctcvr)
    return {"true_ctcvr_uplift_vs_logged": up, "true_ctcvr_uplift_vs_logged_ci95": [lo, hi]}


def summarize(outcome: ArmOutcome, contexts: Sequence[dict], base: ArmOutcome | None, per_prompt: int,
              prompts_by_id: dict[str, dict] | None = None, rewards=None) -> dict:
    """The arm's metrics (see the evaluate stage's docstring); uplifts are against `base` (the SFT arm)."""
    from relate_models.text_metrics import group_diversity

    out = outcome_rates(outcome)
    ids, groups = served_groups(outcome, contexts, per_prompt)
    diversity = group_diversity(groups, n=2)
    out["distinct_2"], out["self_bleu"] = diversity["distinct_2"], diversity["self_bleu"]
    if outcome.learned_ctcvr is not None:
        out["learned_ctcvr"] = float(outcome.learned_ctcvr.mean())
    if rewards is not None and prompts_by_id is not None:
        from relate_models.rewards import score_texts

        out["learned_rewards"] = score_texts(rewards, [prompts_by_id[g] for g in ids], groups)
    if base is not None:
        out.update(uplifts(outcome, base))
    return out


# ------------------------------------------------------------------------------- harness
@dataclass
class Harness:
    """Everything the arms share: config, serving settings, oracle, prompts, traffic, scorer, the A/B test."""

    cfg: "EvaluateConfig"
    serving: ServingConfig
    oracle: object
    prompts: list[dict]
    contexts: list[dict]
    scorer: object
    ab: ABTest
    rewards: list | None = None
    eval_day: str | None = None  # the market and compliance rules scored against (CuratedReader.run_day)

    @classmethod
    def build(cls, cfg: "EvaluateConfig", params_path=None, prompts_path: Path = EVAL_PROMPTS,
              curated: CuratedReader = ALL_CURATED, serving: ServingConfig | None = None) -> "Harness":
        """The harness of one evaluation; `serving` defaults to the params file's `serving:` section."""
        from relate_models.ctcvr import CTCVRScorer

        serving = serving or load_config(ServingConfig, "serving", params_path)
        serving.check_pool_size(cfg.texts_per_prompt, "evaluate.texts_per_prompt")
        eval_day = curated.run_day()
        oracle = load_oracle(eval_day)
        prompts = load_prompts(prompts_path)
        contexts = sample_contexts(prompts, cfg.n_impressions, cfg.seed, curated.table("labeled_impressions"))
        log.info("A/B traffic: %d logged search contexts over %d held-out prompts, scored as of %s", len(contexts),
                 len({c["prompt_id"] for c in contexts}), eval_day)
        scorer = CTCVRScorer.load(CTCVR_DIR)
        return cls(cfg, serving, oracle, prompts, contexts, scorer, ABTest(oracle, contexts, cfg.seed, cfg.fatigue),
                   learned_rewards(scorer, params_path, curated), eval_day)

    def run_arm(self, name: str, served: list[str]) -> ArmOutcome:
        outcome = self.ab.run(name, served)
        outcome.learned_ctcvr = learned_ctcvr(self.scorer, self.contexts, served)
        return outcome

    def sampled_arm(self, name: str, candidates: dict[str, list[str]]) -> ArmOutcome:
        return self.run_arm(name, serve_sampled(candidates, self.contexts, self.ab.serve_draws))

    def served_texts(self, policy_dir: Path, prompts: Sequence[dict]) -> tuple[dict[str, list[str]], list[str]]:
        """(prompt_id -> the texts the policy serves for it, sampled now: its serving pool of
        serving.pool_candidates samples, or plain samples when that is 0; the prompts whose pool
        found no compliant candidate and so serves plain samples)."""
        cfg, serving = self.cfg, self.serving
        if not serving.pool_candidates:
            return generate_candidates(policy_dir, prompts, cfg), []
        candidates = generate_candidates(policy_dir, prompts, cfg, n=serving.pool_candidates)
        return serving_pools(candidates, prompts, self.rewards, cfg.texts_per_prompt, serving.pool_ctcvr_weight)

    def pools_arm(self, name: str, pools: dict[str, list[str]], unpooled: Sequence[str]) -> ArmOutcome:
        """An arm serving the given texts per prompt, one per impression by the shared draws."""
        if unpooled and self.serving.pool_candidates:
            log.warning("%s: %d prompt(s) had no compliant candidate and serve plain samples: %s", name,
                        len(unpooled), list(unpooled)[:5])
        outcome = self.sampled_arm(name, pools)
        outcome.unpooled_prompts = len(unpooled) if self.serving.pool_candidates else None
        return outcome

    def served_arm(self, name: str, policy_dir: Path) -> ArmOutcome:
        """The policy as it would be served, sampled now (`served_texts`)."""
        return self.pools_arm(name, *self.served_texts(policy_dir, self.prompts))

    def table_arm(self, name: str, pools_file: Path) -> ArmOutcome:
        """The policy as serving_tables pooled it (its prompt_pools file): what the ad server serves,
        without sampling the policy again. Every held-out prompt must have a pool."""
        pools, plain = read_prompt_pools(pools_file)
        ids = [p["prompt_id"] for p in self.prompts]
        missing = [i for i in ids if i not in pools]
        if missing:
            raise DataError(f"{pools_file}.prompt_id: {len(missing)} held-out prompt(s) without a pool, e.g. "
                            f"{missing[:3]}; run `python -m pipelines.serving_tables` after grpo")
        return self.pools_arm(name, {i: pools[i] for i in ids}, [i for i in ids if i in plain])

    def logged_arm(self) -> ArmOutcome:
        """The texts the logs show served on the traffic's impressions: what serves today (the incumbent)."""
        return self.run_arm("logged", [c["ad_text"] for c in self.contexts])

    def summarize_all(self, outcomes: dict[str, ArmOutcome], base: str = "sft") -> dict[str, dict]:
        """Each arm's metrics; uplifts over `base`, and over the `logged` arm when there is one."""
        by_id = {r["prompt_id"]: r for r in self.prompts}
        out = {name: summarize(o, self.contexts, outcomes[base], self.cfg.diversity_texts_per_prompt, by_id,
                               self.rewards) for name, o in outcomes.items()}
        if "logged" in outcomes:
            for name in set(outcomes) - {"logged"}:
                out[name].update(logged_uplift(outcomes[name], outcomes["logged"]))
        return out


def generation_settings(cfg: "EvaluateConfig") -> dict:
    """What decides a policy's sampled texts for given prompts (with the policy itself)."""
    return {"texts_per_prompt": cfg.texts_per_prompt, "temperature": cfg.temperature, "top_p": cfg.top_p,
            "max_new_tokens": cfg.max_new_tokens, "generation_seed": cfg.generation_seed}


def serving_settings(cfg: "EvaluateConfig", serving: ServingConfig) -> dict:
    """What decides the texts the `relate` arm serves; publish re-scores a champion served otherwise."""
    return {**generation_settings(cfg), "pool_candidates": serving.pool_candidates,
            "pool_ctcvr_weight": serving.pool_ctcvr_weight}


def write_sft_texts(cfg: "EvaluateConfig", texts: dict[str, list[str]], policy_dir: Path = SFT_DIR,
                    path: Path = SFT_TEXTS) -> None:
    """The SFT arm's texts with what decided them (settings, the policy's digest): publish's
    re-scoring of a champion reuses them instead of sampling the same policy again."""
    write_json(path, {"generation": generation_settings(cfg), "sft_digest": tree_digest(Path(policy_dir)),
                      "prompt_ids": list(texts), "texts": texts})  # sampling depends on the prompts' order too


def recorded_sft_texts(cfg: "EvaluateConfig", prompts: Sequence[dict], policy_dir: Path = SFT_DIR,
                       path: Path = SFT_TEXTS) -> dict[str, list[str]] | None:
    """The evaluate stage's SFT texts when sampling now would give the same ones (same settings,
    policy digest and held-out prompts); None otherwise, with the reason logged."""
    recorded = read_json(Path(path))
    if not isinstance(recorded, dict):
        log.info("no SFT texts recorded at %s: the SFT arm is sampled", path)
        return None
    ids = [p["prompt_id"] for p in prompts]
    decided = (generation_settings(cfg), tree_digest(Path(policy_dir)))
    if (recorded.get("generation"), recorded.get("sft_digest")) != decided:
        log.info("%s was sampled with other settings or another SFT policy: the SFT arm is sampled", path)
        return None
    if recorded.get("prompt_ids") != ids:
        log.info("%s was sampled for other held-out prompts (or another order): the SFT arm is sampled", path)
        return None
    return {i: recorded["texts"][i] for i in ids}


def setup_info(harness: Harness) -> dict:
    cfg = harness.cfg
    return {"n_impressions": cfg.n_impressions, "held_out_prompts": len(harness.prompts),
            "prompts_with_traffic": len({c["prompt_id"] for c in harness.contexts}),
            "texts_per_prompt": cfg.texts_per_prompt, "temperature": cfg.temperature, "top_p": cfg.top_p,
            "seed": cfg.seed, "fatigue": cfg.fatigue, "serving": serving_settings(cfg, harness.serving),
            "traffic": "logged search impressions of the held-out prompts (curated labeled_impressions)",
            "true_ctcvr": "mean oracle p_click * p_conv of the served texts over the traffic (no outcome noise)",
            "ab_ctcvr": "observed conversions / impressions, outcomes drawn from the oracle (common random numbers)",
            "diversity": f"distinct-2 and self-BLEU of the texts served on each prompt's first "
                         f"{cfg.diversity_texts_per_prompt} impressions, averaged over prompts"}
