"""Stage `evaluate`: simulated online A/B tests of the ad-text policies against the oracle.

Variants (arms), all on the held-out prompts (data/prompts/eval.jsonl, written by grpo):
- `sft`: the SFT policy; N texts sampled per prompt, one served at random per impression;
- `two_stage`: the industrial baseline; the same N SFT texts, ranked per request context by
  the learned CTR model (models/ctcvr pCTR), the top one served;
- `relate`: the GRPO policy (models/relate), served like `sft`.
Traffic: real search contexts (ad_id, keyword, query, user_segment, position, user_id) of
the held-out prompts, sampled from the curated logs. Every arm serves the same impressions
with the same random draws (common random numbers); outcomes come from the simulator's
ground truth (relate_sim.oracle), with fatigue on repeated exposures. Reported per arm, with
95% intervals: A/B CTR, CVR, CTCVR (observed clicks/conversions, Wilson), the true CTCVR of
the served texts (the oracle's probabilities averaged over the traffic, no outcome noise),
compliance rate, distinct-2 and self-BLEU of the texts served per prompt, and the learned
CTCVR reward's uplift beside the true uplift (their gap is reward hacking).

Also runs the GenCO combination evaluation (`pipelines.evaluate_combo.evaluate_combos`) and
stores it under "combo". Writes metrics/evaluate.json, reports/evaluate.md, plots/evaluate/ab.png.
Only this module (and evaluate_combo) may read the oracle.
"""
from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from plumbing.atomic import save_figure, write_json, write_text
from plumbing.cli import StageContext, run_stage
from plumbing.config import load_config, require
from plumbing.logs import Progress, get_logger
from plumbing.paths import (ALL_CURATED, CTCVR_DIR, DATA, METRICS, PLOTS, RELATE_DIR, REPORTS, SFT_DIR,
                            CuratedReader)

log = get_logger("evaluate")
EVAL_PROMPTS = DATA / "prompts" / "eval.jsonl"
Z95 = 1.959963984540054
CONTEXT_COLUMNS = ["impression_id", "user_id", "user_segment", "ad_id", "vertical", "keyword", "query", "position"]


@dataclass(kw_only=True)  # kw_only: the pool fields keep defaults until they move to their own section
class EvaluateConfig:
    """The `evaluate:` params section."""

    n_impressions: int  # simulated impressions per arm (the same ones for every arm)
    seed: int  # traffic sample, serving draws and outcome draws
    texts_per_prompt: int  # N texts sampled per held-out prompt from each policy
    temperature: float
    top_p: float
    max_new_tokens: int
    generation_seed: int
    diversity_texts_per_prompt: int  # diversity: the texts served on a prompt's first impressions
    fatigue: bool  # a user seeing the same (near-duplicate) text again clicks less
    # RELATE's serving pool (relate_models.serving): texts_per_prompt of pool_candidates policy samples,
    # compliant, picked for new bigrams plus pool_ctcvr_weight x the learned CTCVR z-score; 0 = plain samples
    pool_candidates: int = 32
    pool_ctcvr_weight: float = 0.1
    torch_threads: int  # torch intra-op threads; 0 = torch's default
    goal_relate_ctcvr_uplift: float  # recorded in metrics/evaluate.json goals, as a share (0.15 = +15%)
    goal_relate_compliance: float

    def __post_init__(self) -> None:
        p = "evaluate"
        for name in ("n_impressions", "texts_per_prompt", "max_new_tokens", "diversity_texts_per_prompt"):
            require(getattr(self, name) >= 1, f"{p}.{name}", f"must be >= 1, got {getattr(self, name)}")
        require(self.diversity_texts_per_prompt >= 2, f"{p}.diversity_texts_per_prompt",
                "must be >= 2 (self-BLEU compares texts)")
        require(self.temperature >= 0, f"{p}.temperature", f"must be >= 0, got {self.temperature}")
        require(0 < self.top_p <= 1, f"{p}.top_p", f"must be in (0, 1], got {self.top_p}")
        require(self.torch_threads >= 0, f"{p}.torch_threads", f"must be >= 0, got {self.torch_threads}")
        require(self.pool_candidates == 0 or self.pool_candidates >= self.texts_per_prompt, f"{p}.pool_candidates",
                f"must be 0 (no pool) or >= texts_per_prompt ({self.texts_per_prompt}), got {self.pool_candidates}")
        require(self.pool_ctcvr_weight >= 0, f"{p}.pool_ctcvr_weight", f"must be >= 0, got {self.pool_ctcvr_weight}")
        require(0 <= self.goal_relate_compliance <= 1, f"{p}.goal_relate_compliance",
                f"must be in [0, 1], got {self.goal_relate_compliance}")


# ------------------------------------------------------------------------------- traffic
def load_prompts(path: Path = EVAL_PROMPTS) -> list[dict]:
    if not Path(path).is_file():
        raise FileNotFoundError(f"no held-out prompts at {path}: run `python -m pipelines.grpo` first")
    rows = [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
    if not rows:
        raise ValueError(f"{path} holds no prompts")
    return rows


def sample_contexts(prompts: Sequence[dict], n: int, seed: int, labeled_dir: Path) -> list[dict]:
    """`n` logged search impressions whose (vertical, keyword) is a held-out prompt, in random order.

    Each context: impression_id, user_id, user_segment, ad_id, vertical, keyword, query,
    position, prompt_id. Sampled without replacement when the logs hold enough, else with.
    """
    import pyarrow.dataset as ds

    labeled_dir = Path(labeled_dir)
    if not labeled_dir.is_dir():
        raise FileNotFoundError(f"no labeled_impressions under {labeled_dir}; run ingest first")
    dataset = ds.dataset(str(labeled_dir), format="parquet", partitioning="hive")
    missing = [c for c in CONTEXT_COLUMNS + ["placement"] if c not in dataset.schema.names]
    if missing:
        raise ValueError(f"{labeled_dir}: columns {missing} missing")
    frame = dataset.to_table(columns=CONTEXT_COLUMNS, filter=ds.field("placement") == "search").to_pandas()
    frame = frame.dropna(subset=["user_id", "user_segment", "ad_id", "vertical", "keyword", "position"])
    prompt_of = {(r["vertical"], r["keyword"]): r["prompt_id"] for r in prompts}
    frame["prompt_id"] = [prompt_of.get((v, k)) for v, k in zip(frame["vertical"], frame["keyword"])]
    frame = frame[frame["prompt_id"].notna()]
    if frame.empty:
        raise ValueError("no logged search impression matches a held-out prompt")
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
    return ctx["vertical"], ctx["keyword"], ctx["query"], ctx["user_segment"], ctx["position"]


def scorer_context(ctx: dict) -> dict:
    return {"vertical": ctx["vertical"], "keyword": ctx["keyword"], "query": ctx["query"],
            "user_segment": ctx["user_segment"], "position": int(ctx["position"])}


# ------------------------------------------------------------------------------- serving
def generate_candidates(policy_dir: Path, prompts: Sequence[dict], cfg: EvaluateConfig,
                        n: int | None = None) -> dict[str, list[str]]:
    """prompt_id -> n (default N) texts sampled from the policy (the same seed for every policy)."""
    from relate_models.policy import generate_texts

    texts = generate_texts(policy_dir, prompts, n or cfg.texts_per_prompt, max_new_tokens=cfg.max_new_tokens,
                           temperature=cfg.temperature, top_p=cfg.top_p, seed=cfg.generation_seed)
    return {row["prompt_id"]: group for row, group in zip(prompts, texts)}


def serving_pools(candidates: dict[str, list[str]], prompts: Sequence[dict], rewards, size: int,
                  ctcvr_weight: float) -> tuple[dict[str, list[str]], list[str]]:
    """(prompt_id -> its serving pool, the prompts whose every candidate violated and so serve them unpooled).

    Scores come from the learned `ctcvr` and `quality_compliance` rewards, as GRPO saw them.
    """
    from relate_models.rewards import group_kwargs
    from relate_models.serving import select_pool

    by_name = {r.name: r for r in rewards}
    missing = {"ctcvr", "quality_compliance"} - set(by_name)
    if missing:
        raise ValueError(f"serving pool: reward(s) {sorted(missing)} missing")
    groups = [candidates[row["prompt_id"]] for row in prompts]
    flat, kwargs = group_kwargs(prompts, groups)
    ctcvr = by_name["ctcvr"].score(flat, **kwargs)
    compliance = by_name["quality_compliance"].score(flat, **kwargs)
    pools, unpooled, start = {}, [], 0
    for row, texts in zip(prompts, groups):
        end = start + len(texts)
        picked = select_pool(texts, size, ctcvr[start:end], [c < 0 for c in compliance[start:end]], ctcvr_weight)
        if not picked:  # nothing compliant to pool: serve the plain samples, and say so
            unpooled.append(row["prompt_id"])
            picked = list(range(min(size, len(texts))))
        pools[row["prompt_id"]] = [texts[i] for i in picked]
        start = end
    return pools, unpooled


def serve_sampled(candidates: dict[str, list[str]], contexts: Sequence[dict], draws: np.ndarray) -> list[str]:
    """One of the prompt's N texts per impression, picked by the shared uniform `draws` in [0, 1)."""
    return [candidates[c["prompt_id"]][int(u * len(candidates[c["prompt_id"]]))] for c, u in zip(contexts, draws)]


def serve_top_ranked(candidates: dict[str, list[str]], contexts: Sequence[dict], scorer,
                     by: str = "p_ctr") -> list[str]:
    """Per request context, the candidate the learned model ranks first by `by` (pCTR: two-stage)."""
    keys = sorted({(c["prompt_id"], context_key(c)) for c in contexts})
    texts, ctxs, owner = [], [], []
    for k, (prompt_id, key) in enumerate(keys):
        ctx = scorer_context(dict(zip(("vertical", "keyword", "query", "user_segment", "position"), key)))
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
    keys = ("vertical", "keyword", "query", "user_segment", "position")
    scores = scorer.score([t for _, t in pairs], [scorer_context(dict(zip(keys, k))) for k, _ in pairs])["p_ctcvr"]
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


def wilson(successes: int, trials: int) -> tuple[float, float, float]:
    """(estimate, low, high), Wilson score interval at 95%."""
    if trials <= 0:
        return float("nan"), 0.0, 1.0
    p, z2 = successes / trials, Z95 * Z95
    denom = 1 + z2 / trials
    centre = (p + z2 / (2 * trials)) / denom
    half = Z95 * math.sqrt(p * (1 - p) / trials + z2 / (4 * trials * trials)) / denom
    return p, max(0.0, centre - half), min(1.0, centre + half)


def mean_ci(values: np.ndarray) -> tuple[float, float, float]:
    """(mean, low, high): normal interval of a mean over independent impressions."""
    values = np.asarray(values, dtype=float)
    m = float(values.mean())
    half = Z95 * float(values.std(ddof=1)) / math.sqrt(len(values)) if len(values) > 1 else float("inf")
    return m, m - half, m + half


def paired_uplift(base: np.ndarray, arm: np.ndarray) -> tuple[float, float, float]:
    """(mean(arm) / mean(base) - 1, low, high) over paired impressions (delta method).

    The pairing (same contexts, same draws) is what makes the interval narrow: the variance
    is that of arm_i - R * base_i, not of two independent samples.
    """
    base, arm = np.asarray(base, dtype=float), np.asarray(arm, dtype=float)
    mb, ma = base.mean(), arm.mean()
    if mb <= 0:
        return float("nan"), float("nan"), float("nan")
    ratio = ma / mb
    resid = arm - ratio * base
    se = float(resid.std(ddof=1)) / math.sqrt(len(base)) / mb if len(base) > 1 else float("inf")
    return ratio - 1, ratio - 1 - Z95 * se, ratio - 1 + Z95 * se


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


def summarize(outcome: ArmOutcome, contexts: Sequence[dict], base: ArmOutcome | None, per_prompt: int,
              prompts_by_id: dict[str, dict] | None = None, rewards=None) -> dict:
    """The arm's metrics (see the module docstring); uplifts are against `base` (the SFT arm)."""
    from relate_models.text_metrics import group_diversity

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
    ids, groups = served_groups(outcome, contexts, per_prompt)
    diversity = group_diversity(groups, n=2)
    out["distinct_2"], out["self_bleu"] = diversity["distinct_2"], diversity["self_bleu"]
    if outcome.learned_ctcvr is not None:
        out["learned_ctcvr"] = float(outcome.learned_ctcvr.mean())
    if rewards is not None and prompts_by_id is not None:
        from relate_models.rewards import score_texts

        out["learned_rewards"] = score_texts(rewards, [prompts_by_id[g] for g in ids], groups)
    if base is not None:
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


# ------------------------------------------------------------------------------- harness
@dataclass
class Harness:
    """Everything the arms share: config, oracle, prompts, traffic, scorer, the A/B test."""

    cfg: EvaluateConfig
    oracle: object
    prompts: list[dict]
    contexts: list[dict]
    scorer: object
    ab: ABTest
    rewards: list | None = None

    @classmethod
    def build(cls, cfg: EvaluateConfig, params_path=None, prompts_path: Path = EVAL_PROMPTS,
              curated: CuratedReader = ALL_CURATED) -> "Harness":
        from relate_models.ctcvr import CTCVRScorer
        from relate_sim.oracle import Oracle

        oracle = Oracle.load()
        prompts = load_prompts(prompts_path)
        contexts = sample_contexts(prompts, cfg.n_impressions, cfg.seed, curated.table("labeled_impressions"))
        log.info("A/B traffic: %d logged search contexts over %d held-out prompts", len(contexts),
                 len({c["prompt_id"] for c in contexts}))
        scorer = CTCVRScorer.load(CTCVR_DIR)
        return cls(cfg, oracle, prompts, contexts, scorer, ABTest(oracle, contexts, cfg.seed, cfg.fatigue),
                   learned_rewards(scorer, params_path, curated))

    def run_arm(self, name: str, served: list[str]) -> ArmOutcome:
        outcome = self.ab.run(name, served)
        outcome.learned_ctcvr = learned_ctcvr(self.scorer, self.contexts, served)
        return outcome

    def sampled_arm(self, name: str, candidates: dict[str, list[str]]) -> ArmOutcome:
        return self.run_arm(name, serve_sampled(candidates, self.contexts, self.ab.serve_draws))

    def pooled_arm(self, name: str, policy_dir: Path) -> ArmOutcome:
        """The policy served through its serving pool (cfg.pool_candidates samples per prompt)."""
        cfg = self.cfg
        candidates = generate_candidates(policy_dir, self.prompts, cfg, n=cfg.pool_candidates)
        pools, unpooled = serving_pools(candidates, self.prompts, self.rewards, cfg.texts_per_prompt,
                                        cfg.pool_ctcvr_weight)
        if unpooled:
            log.warning("%s: %d prompt(s) had no compliant candidate and serve plain samples: %s", name,
                        len(unpooled), unpooled[:5])
        outcome = self.sampled_arm(name, pools)
        outcome.unpooled_prompts = len(unpooled)
        return outcome

    def served_arm(self, name: str, policy_dir: Path) -> ArmOutcome:
        """The policy as it is served: through its pool when cfg.pool_candidates, else plain samples."""
        if self.cfg.pool_candidates:
            return self.pooled_arm(name, policy_dir)
        return self.sampled_arm(name, generate_candidates(policy_dir, self.prompts, self.cfg))

    def summarize_all(self, outcomes: dict[str, ArmOutcome], base: str = "sft") -> dict[str, dict]:
        by_id = {r["prompt_id"]: r for r in self.prompts}
        return {name: summarize(o, self.contexts, outcomes[base], self.cfg.diversity_texts_per_prompt, by_id,
                                self.rewards) for name, o in outcomes.items()}


def learned_rewards(scorer, params_path, curated: CuratedReader = ALL_CURATED):
    """The grpo stage's reward functions (learned rewards only), to score every arm's texts."""
    from relate_models.grpo_trainer import GRPOStageConfig, reward_context
    from relate_models.policy import load_search_corpus
    from relate_models.rewards import build_rewards

    grpo_cfg = load_config(GRPOStageConfig, "grpo", params_path)
    ctx = reward_context(grpo_cfg, scorer, load_search_corpus(curated.table("text_stats")))
    return build_rewards(["ctcvr", "quality_structural", "quality_compliance", "diversity"], ctx)


# -------------------------------------------------------------------------------- output
ROWS = (  # (column title, formatter)
    ("true CTCVR (95% CI)", lambda m: f"{m['true_ctcvr'] * 1e3:.3f} [{m['true_ctcvr_ci95'][0] * 1e3:.3f}, "
                                      f"{m['true_ctcvr_ci95'][1] * 1e3:.3f}] ‰"),
    ("true CTCVR uplift vs SFT (95% CI)", lambda m: _pct_ci(m, "true_ctcvr_uplift_vs_sft")),
    ("A/B CTCVR (95% CI)", lambda m: f"{m['ctcvr'] * 1e3:.3f} [{m['ctcvr_ci95'][0] * 1e3:.3f}, "
                                     f"{m['ctcvr_ci95'][1] * 1e3:.3f}] ‰"),
    ("A/B CTCVR uplift (95% CI)", lambda m: _pct_ci(m, "ab_ctcvr_uplift_vs_sft")),
    ("A/B CTR (95% CI)", lambda m: f"{m['ctr'] * 100:.2f}% [{m['ctr_ci95'][0] * 100:.2f}, {m['ctr_ci95'][1] * 100:.2f}]"),
    ("A/B CVR (95% CI)", lambda m: f"{m['cvr'] * 100:.2f}% [{m['cvr_ci95'][0] * 100:.2f}, {m['cvr_ci95'][1] * 100:.2f}]"),
    ("compliance (95% CI)", lambda m: f"{m['compliance_rate'] * 100:.2f}% [{m['compliance_rate_ci95'][0] * 100:.2f}, "
                                      f"{m['compliance_rate_ci95'][1] * 100:.2f}]"),
    ("distinct-2", lambda m: f"{m['distinct_2']:.3f}"),
    ("self-BLEU", lambda m: f"{m['self_bleu']:.3f}"),
    ("learned CTCVR uplift", lambda m: f"{m['learned_ctcvr_uplift_vs_sft'] * 100:+.1f}%"
                                       if "learned_ctcvr_uplift_vs_sft" in m else "-"),
    ("hacking gap (learned - true)", lambda m: f"{m['reward_hacking_gap'] * 100:+.1f} pt"
                                               if "reward_hacking_gap" in m else "-"),
)


def _pct_ci(m: dict, key: str) -> str:
    if key not in m or m[key] is None or math.isnan(m[key]):
        return "-"
    lo, hi = m[f"{key}_ci95"]
    return f"{m[key] * 100:+.1f}% [{lo * 100:+.1f}, {hi * 100:+.1f}]"


def markdown_table(arms: dict[str, dict]) -> str:
    names = list(arms)
    lines = ["| metric | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for title, fmt in ROWS:
        lines.append(f"| {title} | " + " | ".join(fmt(arms[n]) for n in names) + " |")
    return "\n".join(lines)


def examples_table(harness: Harness, outcomes: dict[str, ArmOutcome], k: int = 3) -> str:
    """The texts each arm served on the first impressions of a few prompts, with their true verdict."""
    lines = ["| prompt | " + " | ".join(outcomes) + " |", "|---|" + "---|" * len(outcomes)]
    shown: set = set()
    for i, ctx in enumerate(harness.contexts):
        if ctx["prompt_id"] in shown:
            continue
        shown.add(ctx["prompt_id"])
        cells = []
        for o in outcomes.values():
            mark = "" if o.compliant[i] else " ⚠ violates policy"
            cells.append(o.served[i].replace("|", "/") + mark)
        lines.append(f"| {ctx['prompt_id'].replace('|', '/')} | " + " | ".join(cells) + " |")
        if len(shown) >= k:
            break
    return "\n".join(lines)


def bar_chart(arms: dict[str, dict], path: Path, title: str) -> None:
    """True CTCVR (oracle probabilities) and A/B CTCVR with 95% CIs, compliance and distinct-2 per arm."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(arms)
    x = np.arange(len(names))
    fig, axes = plt.subplots(1, 3, figsize=(4.0 * 3, 3.4))
    ax = axes[0]
    for offset, key, label in ((-0.2, "true_ctcvr", "true (oracle probabilities)"), (0.2, "ctcvr", "A/B observed")):
        est = np.array([arms[n][key] for n in names]) * 1e3
        lo = np.array([arms[n][f"{key}_ci95"][0] for n in names]) * 1e3
        hi = np.array([arms[n][f"{key}_ci95"][1] for n in names]) * 1e3
        ax.bar(x + offset, est, 0.4, yerr=_yerr(est, lo, hi), capsize=3, label=label)
    ax.set_title("CTCVR (per mille), 95% CI", fontsize=9)
    ax.legend(fontsize=7)
    for ax, key, label in ((axes[1], "compliance_rate", "compliance rate, 95% CI"), (axes[2], "distinct_2", "distinct-2")):
        est = np.array([arms[n][key] for n in names])
        if f"{key}_ci95" in arms[names[0]]:
            lo = np.array([arms[n][f"{key}_ci95"][0] for n in names])
            hi = np.array([arms[n][f"{key}_ci95"][1] for n in names])
            ax.bar(x, est, 0.6, yerr=_yerr(est, lo, hi), capsize=3, color="tab:green")
            ax.set_ylim(max(0.0, float(lo.min()) - 0.05), 1.0)
        else:
            ax.bar(x, est, 0.6, color="tab:purple")
        ax.set_title(label, fontsize=9)
    for ax in axes:
        ax.set_xticks(x)
        ax.set_xticklabels(names, fontsize=7, rotation=20)
        ax.tick_params(labelsize=7)
    fig.suptitle(title, fontsize=10)
    save_figure(fig, path)


def _yerr(est, lo, hi) -> list:
    """Error-bar lengths; clipped at 0 (a Wilson bound at p = 0 can sit a rounding error above it)."""
    return [np.maximum(est - lo, 0.0), np.maximum(hi - est, 0.0)]


def goals(arms: dict[str, dict], cfg: EvaluateConfig) -> dict:
    relate, sft, two = arms["relate"], arms["sft"], arms["two_stage"]
    target, compliance = cfg.goal_relate_ctcvr_uplift, cfg.goal_relate_compliance
    return {
        f"relate_true_ctcvr_uplift_ge_{target:g}": relate["true_ctcvr_uplift_vs_sft"] >= target,
        "relate_beats_two_stage": relate["true_ctcvr"] > two["true_ctcvr"],
        f"relate_compliance_ge_{compliance:g}": relate["compliance_rate"] >= compliance,
        "relate_distinct_2_ge_sft": relate["distinct_2"] >= sft["distinct_2"],
    }


def serving_settings(cfg: EvaluateConfig) -> dict:
    """What decides the texts the `relate` arm serves; publish re-scores a champion served otherwise."""
    return {"texts_per_prompt": cfg.texts_per_prompt, "temperature": cfg.temperature, "top_p": cfg.top_p,
            "max_new_tokens": cfg.max_new_tokens, "generation_seed": cfg.generation_seed,
            "pool_candidates": cfg.pool_candidates, "pool_ctcvr_weight": cfg.pool_ctcvr_weight}


def setup_info(harness: Harness) -> dict:
    cfg = harness.cfg
    return {"n_impressions": cfg.n_impressions, "held_out_prompts": len(harness.prompts),
            "prompts_with_traffic": len({c["prompt_id"] for c in harness.contexts}),
            "texts_per_prompt": cfg.texts_per_prompt, "temperature": cfg.temperature, "top_p": cfg.top_p,
            "seed": cfg.seed, "fatigue": cfg.fatigue, "serving": serving_settings(cfg),
            "traffic": "logged search impressions of the held-out prompts (curated labeled_impressions)",
            "true_ctcvr": "mean oracle p_click * p_conv of the served texts over the traffic (no outcome noise)",
            "ab_ctcvr": "observed conversions / impressions, outcomes drawn from the oracle (common random numbers)",
            "diversity": f"distinct-2 and self-BLEU of the texts served on each prompt's first "
                         f"{cfg.diversity_texts_per_prompt} impressions, averaged over prompts"}


def main(argv: list[str] | None = None) -> int:
    return run_stage("evaluate", __doc__, run, argv)


def run(ctx: StageContext) -> None:
    """The simulated A/B of every arm, GenCO's evaluation, the metrics, plot and report."""
    import torch

    cfg = ctx.config(EvaluateConfig)
    if cfg.torch_threads:
        torch.set_num_threads(cfg.torch_threads)
    started = time.monotonic()
    harness = Harness.build(cfg, ctx.params, curated=ctx.curated)
    sft_texts = generate_candidates(SFT_DIR, harness.prompts, cfg)
    outcomes = {
        "sft": harness.sampled_arm("sft", sft_texts),
        "two_stage": harness.run_arm("two_stage", serve_top_ranked(sft_texts, harness.contexts, harness.scorer)),
        "relate": harness.served_arm("relate", RELATE_DIR),
    }
    if cfg.pool_candidates:  # the policy's plain samples and the pool over SFT: the pool's share in view
        outcomes["relate_sampled"] = harness.sampled_arm(
            "relate_sampled", generate_candidates(RELATE_DIR, harness.prompts, cfg))
        outcomes["sft_pool"] = harness.pooled_arm("sft_pool", SFT_DIR)
    arms = harness.summarize_all(outcomes)
    for name, m in arms.items():
        log.info("%s: true CTCVR %.5f (uplift %+.1f%%), A/B CTCVR %.5f, compliance %.4f, distinct-2 %.3f",
                 name, m["true_ctcvr"], 100 * m.get("true_ctcvr_uplift_vs_sft", 0.0), m["ctcvr"],
                 m["compliance_rate"], m["distinct_2"])

    from pipelines.evaluate_combo import evaluate_combos  # GenCO: its artifacts must exist

    combo = evaluate_combos(ctx.params)
    metrics = {**arms, "goals": goals(arms, cfg), "setup": setup_info(harness), "combo": combo,
               "seconds": round(time.monotonic() - started, 1)}
    write_json(METRICS / "evaluate.json", _finite(metrics))
    bar_chart(arms, PLOTS / "evaluate" / "ab.png", f"Simulated A/B on {cfg.n_impressions:,} held-out impressions")
    write_text(REPORTS / "evaluate.md", render_report(harness, arms, outcomes, metrics))
    log.info("evaluate done in %.1fs: goals %s", metrics["seconds"], metrics["goals"])


if __name__ == "__main__":
    sys.exit(main())
