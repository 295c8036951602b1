"""Train GenCO's combination generator by RL on the MIL attribution model's reward.

Reads only models/attribution (the reward model and its element vocabulary: each ad's
candidate titles, images and highlights) and data/curated/combo_stats (each ad's vertical,
a context feature, and the elements live on the newest day: retired ones are never picked) -
never the simulator's truth. Trains `relate_models.combo_generator`
with group-baseline policy gradient and per-slot credit, then decodes the top-k
combinations per ad with beam search.

Writes models/combo_policy/ (generator.safetensors, config.json, serving.parquet,
history.json, lineage.json) and metrics/combo_policy.json. `training.mode: warm`
(pipelines/warm_start.py): the champion's generator continues for `combo_policy.warm_steps`
steps when the reward model has trained on a day after it; forced full when today's problem
holds ads, elements or context values it has no rows for. serving.parquet: one row per (ad_id, rank),
rank 1 = the best by the MIL reward of the generator's `serving_beam` most probable
combinations (beam search), so top-1 reaches the reward's argmax whenever the beam holds
it; `score` is the MIL model's predicted CTR of the combination (the learned reward, not
the truth), `policy_prob` the generator's probability of it.

    python -m pipelines.combo_policy [--params params.yaml]
"""
from __future__ import annotations

import dataclasses
import itertools
import json
import math
import sys
import time
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import torch

from pipelines.warm_start import Start, plan, training_block, write_lineage
from plumbing import atomic, paths
from plumbing.cli import StageContext, run_stage
from plumbing.config import require
from plumbing.logs import get_logger
from plumbing.paths import ATTRIBUTION_DIR, COMBO_POLICY_DIR as MODEL_DIR
from plumbing.runtime import limit_torch_threads
from plumbing.tables import read_partition
from relate_models import attribution as attr
from relate_models import combo_generator as cg

log = get_logger(__name__)
SERVING_FILE = MODEL_DIR / "serving.parquet"
METRICS_FILE = paths.METRICS / "combo_policy.json"
SERVING_COLUMNS = ["ad_id", "rank", "title_id", "image_id", "highlight_id", "score", "policy_prob"]


@dataclass
class ComboPolicyConfig:
    seed: int
    hidden_dim: int
    steps: int
    warm_steps: int  # steps when continuing from the champion's generator
    group_size: int  # combinations sampled per ad per step (the GRPO group)
    ads_per_step: int  # 0 = every ad every step
    learning_rate: float
    entropy_coef: float  # initial weight of the diversity regulariser
    entropy_target: float  # nats per slot the weight adapts to hold; 0 = fixed weight
    temperature: float
    credit_assignment: bool  # false: every slot gets the sequence advantage (ablation)
    top_k: int
    serving_beam: int  # beam width of the serving decode; its candidates are re-ranked by the MIL reward
    diversity_samples: int  # samples per ad for the distinct-combinations metric
    max_enumerate: int  # ads with at most this many combinations also get the exhaustive MIL argmax
    log_every: int
    torch_threads: int  # torch intra-op threads; 0 = torch's default
    cold_bonus: float  # logits added to an element with no clicks (content models): the exploration bonus

    def __post_init__(self):
        for name in ("hidden_dim", "steps", "warm_steps", "top_k", "diversity_samples", "max_enumerate", "log_every"):
            require(getattr(self, name) >= 1, f"combo_policy.{name}", "must be >= 1")
        require(self.serving_beam >= self.top_k, "combo_policy.serving_beam", f"must be >= top_k ({self.top_k})")
        require(self.group_size >= 2, "combo_policy.group_size", "must be >= 2 (the baseline is the group mean)")
        require(self.ads_per_step >= 0, "combo_policy.ads_per_step", "must be >= 0 (0 = all ads)")
        require(0 < self.learning_rate <= 10, "combo_policy.learning_rate", "must be in (0, 10]")
        require(self.entropy_coef > 0, "combo_policy.entropy_coef", "must be > 0")
        require(self.entropy_target >= 0, "combo_policy.entropy_target", "must be >= 0")
        require(self.temperature > 0, "combo_policy.temperature", "must be > 0")
        require(self.torch_threads >= 0, "combo_policy.torch_threads", "must be >= 0")
        require(0 <= self.cold_bonus <= 5, "combo_policy.cold_bonus", "must be in [0, 5] logits")

    def train_settings(self) -> cg.TrainSettings:
        return cg.TrainSettings(steps=self.steps, group_size=self.group_size, ads_per_step=self.ads_per_step,
                                learning_rate=self.learning_rate, entropy_coef=self.entropy_coef,
                                entropy_target=self.entropy_target, temperature=self.temperature,
                                credit_assignment=self.credit_assignment, seed=self.seed, log_every=self.log_every)


def ad_verticals(scorer: attr.AttributionScorer) -> dict[str, str]:
    """ad_id -> vertical, from the combo_stats days the reward model was trained on."""
    days = list(scorer.meta.get("train_days") or [])
    if not days:
        raise ValueError(f"{ATTRIBUTION_DIR}/config.json has no train_days (retrain the attribution model)")
    frames = [read_partition("combo_stats", d, ["ad_id", "vertical"]) for d in days]
    rows = pd.concat(frames, ignore_index=True).dropna().drop_duplicates("ad_id", keep="last")
    return dict(zip(rows["ad_id"].astype(str), rows["vertical"].astype(str)))


def live_elements(curated: paths.CuratedReader) -> dict[str, dict[str, set[str]]] | None:
    """ad_id -> slot -> the elements served on the newest combo_stats day this run reads: the ads'
    catalog as of the run (an element retired since training can no longer be served); None: no day."""
    days = paths.partitions(curated.table("combo_stats"))
    if not days:
        return None
    frame = read_partition("combo_stats", days[-1], ["ad_id", *attr.ELEMENT_COLUMNS], curated=curated)
    live: dict[str, dict[str, set[str]]] = {}
    for slot, column in zip(attr.SLOTS, attr.ELEMENT_COLUMNS):
        for ad, element in zip(frame["ad_id"].astype(str), frame[column].astype(str)):
            live.setdefault(ad, {s: set() for s in attr.SLOTS})[slot].add(element)
    return live


def with_live_content(scorer: attr.AttributionScorer, curated: paths.CuratedReader,
                      live: dict[str, dict[str, set[str]]] | None):
    """(scorer, live): for a content model, the scorer with the newest landed element table's content (a
    new element is scored by its content) and that table as the live catalog; else both unchanged."""
    days = [d for d in paths.partitions(paths.content_table("elements")) if curated.as_of is None or d <= curated.as_of]
    if scorer.content is None or not days:
        return scorer, live
    elements = pq.read_table(paths.partition(paths.content_table("elements"), days[-1])).to_pandas()
    catalog: dict[str, dict[str, set[str]]] = {}
    for ad, kind, element in elements[["ad_id", "kind", "element_id"]].astype(str).itertuples(index=False):
        catalog.setdefault(ad, {s: set() for s in attr.SLOTS})[kind].add(element)
    return scorer.with_elements(elements), catalog


def build_problem(scorer: attr.AttributionScorer, verticals: dict[str, str],
                  live: dict[str, dict[str, set[str]]] | None = None) -> cg.ComboProblem:
    """Each ad's candidates are the elements the reward model can score (trained on, or with content: a
    content model scores an element with no history by its content) that are still live (`live`; a slot
    none of whose candidates is live keeps them all)."""
    per_ad = {a: scorer.vocab.ad_elements(a) for a in scorer.vocab.ads}
    if scorer.content is not None:
        for a, slots in per_ad.items():
            for slot, elements in scorer.content.ad_elements(a).items():
                slots[slot] = sorted(set(slots[slot]) | set(elements))
    for ad, slots in per_ad.items():
        for slot, elements in slots.items():
            kept = [e for e in elements if live is None or e in live.get(ad, {}).get(slot, ())]
            slots[slot] = kept or elements
    ads = [a for a in scorer.vocab.ads if any(per_ad[a].values())]
    if not ads:
        raise ValueError("the attribution model has no ad with candidate elements")
    return cg.ComboProblem(
        ad_ids=ads,
        slots=list(attr.SLOTS),
        candidates=[[per_ad[a][s] for s in attr.SLOTS] for a in ads],
        context={"product_id": [scorer.vocab.ad_product[a] for a in ads],
                 "vertical": [verticals.get(a, "unknown") for a in ads]},
    )


def mil_argmax(scorer: attr.AttributionScorer, problem: cg.ComboProblem, max_enumerate: int) -> dict[str, tuple]:
    """Exhaustive argmax of the MIL model's CTR per ad, where the space is small enough to list."""
    best = {}
    for a, ad_id in enumerate(problem.ad_ids):
        if problem.n_combinations(a) > max_enumerate:
            continue
        combos = list(itertools.product(*[c or [None] for c in problem.candidates[a]]))
        grid = pd.DataFrame(combos, columns=list(attr.ELEMENT_COLUMNS))
        grid.insert(0, "ad_id", ad_id)
        p = scorer.score_frame(grid, on_unknown="fallback").p_click
        i = int(np.argmax(p))
        best[ad_id] = (*combos[i], float(p[i]))
    return best


def serving_table(policy: cg.ComboPolicy, scorer: attr.AttributionScorer, top_k: int, beam: int,
                  cold_bonus: float = 0.0) -> tuple[pd.DataFrame, list]:
    """The top_k of the policy's `beam` most probable combinations per ad, ranked by the MIL reward.

    Why re-rank: the policy is a smoothed (entropy-regularised) image of the reward, so its mode
    can miss the reward's argmax by a near-tie; scoring a beam of candidates with the reward
    model itself picks the best of them, and never enumerates the combination space.
    """
    rows = policy.top_k(beam)
    frame = pd.DataFrame(rows)
    frame = frame.rename(columns={s: attr.SLOT_COLUMNS[s] for s in attr.SLOTS})
    result = scorer.score_frame(frame[["ad_id", *attr.ELEMENT_COLUMNS]], on_unknown="fallback")
    cold = scorer.cold_slots(frame).sum(1)
    # an element with no clicks carries the exploration bonus here too (0 without a content model)
    frame["score"] = 1.0 / (1.0 + np.exp(-(result.logit + (cold_bonus if scorer.content is not None else 0.0) * cold)))
    frame["policy_prob"] = np.exp(frame["logp"].to_numpy())
    # stable sort: equal scores keep the policy's (beam) order
    frame = frame.sort_values(["ad_id", "score"], ascending=[True, False], kind="stable")
    frame["rank"] = (frame.groupby("ad_id").cumcount() + 1).astype(np.int32)
    frame = frame[frame["rank"] <= top_k].reset_index(drop=True)
    top_rows = frame[["ad_id", "rank", "picks"]].to_dict("records")
    return frame[SERVING_COLUMNS], top_rows


def run(cfg: ComboPolicyConfig, curated: paths.CuratedReader = paths.ALL_CURATED, params=None) -> dict:
    """Train (`params`' training.mode warm: continue the champion's generator), decode, write; the metrics."""
    limit_torch_threads(cfg.torch_threads)
    started = time.monotonic()
    scorer = attr.AttributionScorer.load(ATTRIBUTION_DIR)
    scorer, live = with_live_content(scorer, curated, live_elements(curated))
    problem = build_problem(scorer, ad_verticals(scorer), live)
    sizes = [problem.n_combinations(a) for a in range(len(problem.ad_ids))]
    log.info("%d ads, %d-%d combinations each (never enumerated for training)", len(problem.ad_ids),
             min(sizes), max(sizes))
    reward_days = sorted(scorer.meta.get("train_days") or [])
    policy, reward, history, steps, start = _train(cfg, scorer, problem, reward_days, params)
    policy.meta.update({"config": asdict(cfg), "attribution_train_days": scorer.meta.get("train_days")})
    serving, top_rows = serving_table(policy, scorer, cfg.top_k, cfg.serving_beam, cfg.cold_bonus)

    top1 = serving[serving["rank"] == 1].set_index("ad_id")
    argmax = mil_argmax(scorer, problem, cfg.max_enumerate)
    matched = [ad for ad, b in argmax.items() if ad in top1.index and tuple(top1.loc[ad, list(attr.ELEMENT_COLUMNS)]) == b[:3]]
    mil_best = np.array([argmax[a][3] for a in argmax if a in top1.index])
    mil_top1 = np.array([top1.loc[a, "score"] for a in argmax if a in top1.index])
    with torch.no_grad():
        ads = torch.arange(len(problem.ad_ids)).repeat_interleave(cfg.diversity_samples)
        sampled = policy.sample(ads, torch.Generator().manual_seed(cfg.seed))
        sampled_logit, _ = reward(ads, sampled.picks)
    metrics = {
        "ads": len(problem.ad_ids),
        "combinations_per_ad_max": max(sizes),
        "steps": steps,
        "credit_assignment": cfg.credit_assignment,
        "final_mean_reward_logit": history[-1]["mean_reward"],
        "initial_mean_reward_logit": history[0]["mean_reward"],
        "sampled_mean_mil_ctr": float(torch.sigmoid(sampled_logit).mean()),
        "top1_mean_mil_ctr": float(top1["score"].mean()),
        "mil_argmax_mean_ctr": float(mil_best.mean()) if len(mil_best) else math.nan,
        # learned-reward view only: the true CTRs are in metrics/evaluate_combo.json
        "top1_mil_ctr_ratio_to_mil_argmax": float(mil_top1.mean() / mil_best.mean()) if len(mil_best) else math.nan,
        "top1_equals_mil_argmax_share": len(matched) / len(argmax) if argmax else math.nan,
        "ads_enumerated": len(argmax),
        "diversity": cg.diversity_metrics(policy, top_rows, cfg.diversity_samples, cfg.seed),
        "train_seconds": history[-1]["seconds"],
    }
    if start is not None:
        metrics["training"] = training_block(start, start.new_days(reward_days))
    atomic.require_finite("combo_policy", "metrics", metrics)  # a diverged run replaces nothing
    with atomic.directory(MODEL_DIR) as staging:
        policy.save(staging)
        atomic.require_finite_weights("combo_policy", staging)
        serving.to_parquet(staging / "serving.parquet", index=False)
        (staging / "history.json").write_text(pd.DataFrame(history).to_json(orient="records", indent=1) + "\n")
        if start is not None:
            write_lineage(staging, start.lineage(reward_days[-1]))
    metrics["seconds"] = round(time.monotonic() - started, 2)
    atomic.write_json(METRICS_FILE, metrics)
    log.info("top-1 MIL CTR %.5f vs MIL argmax %.5f (same combination for %.0f%% of ads); "
             "%.1f distinct combos in %d samples per ad; wrote %s", metrics["top1_mean_mil_ctr"],
             metrics["mil_argmax_mean_ctr"], 100 * metrics["top1_equals_mil_argmax_share"],
             metrics["diversity"]["distinct_combos_in_samples_per_ad"], cfg.diversity_samples, MODEL_DIR)
    return metrics


def _train(cfg: ComboPolicyConfig, scorer: attr.AttributionScorer, problem: cg.ComboProblem, reward_days: list[str],
           params) -> tuple:
    """(generator, its reward, history, steps, warm-start plan or None): trained from scratch, or the
    champion's continued `warm_steps` steps (the reward model has trained on a day it has not seen)."""
    # the generator learns from the reward model: it has trained through the reward model's last day
    start = plan("combo_policy", "combo_policy", params, reward_days[-1]) if params and reward_days else None
    policy, start = _start_policy(cfg, problem, start)
    settings = cfg.train_settings()
    if start is not None and start.warm:
        settings = dataclasses.replace(settings, steps=cfg.warm_steps,
                                       entropy_coef=_last_entropy_weight(start.source, cfg.entropy_coef))
    reward = cg.MILReward.from_scorer(scorer, policy.problem, cfg.cold_bonus)
    # warm: a fresh Adam (the champion's optimizer state is not published); the generator's weights carry
    # what it learned, and its adaptive entropy weight continues from the champion's last (above)
    history = policy.train(reward, settings, log)
    return policy, reward, history, settings.steps, start


def _start_policy(cfg: ComboPolicyConfig, problem: cg.ComboProblem, start: Start | None
                  ) -> tuple[cg.ComboPolicy, Start | None]:
    """(the generator to train, `start`): the champion's bound to `problem` when it can be, else a new one
    (full; forced full when the problem holds ads, elements or context values the champion has no rows for)."""
    if start is not None and start.warm:
        champion = cg.ComboPolicy.load(start.source)
        start = _check_champion(start, champion, cg.with_ad_context(problem), cfg)
        if start.warm:
            return champion.continued_on(problem), start
    return cg.ComboPolicy.create(problem, cfg.hidden_dim, cfg.seed), start


def _check_champion(start: Start, champion: cg.ComboPolicy, problem: cg.ComboProblem, cfg: ComboPolicyConfig
                    ) -> Start:
    """`start`, or a full run when the champion's generator cannot represent `problem`."""
    old = champion.model.cfg
    if old.hidden_dim != cfg.hidden_dim or champion.problem.slots != problem.slots:
        return start.full(f"the champion's generator has hidden_dim {old.hidden_dim} and slots {champion.problem.slots}"
                          f", today's config {cfg.hidden_dim} and {problem.slots}")
    if set(champion.context_vocab) != set(problem.context):
        return start.full(f"the context features changed: {sorted(champion.context_vocab)} -> {sorted(problem.context)}")
    start = start.check_known("ads", champion.problem.ad_ids, problem.ad_ids)
    start = start.check_known("elements", map("/".join, champion.problem.elements()), map("/".join, problem.elements()))
    for name in sorted(set(problem.context) - {"ad_id"}):
        start = start.check_known(f"{name} values", champion.context_vocab[name], map(str, problem.context[name]))
    return start


def _last_entropy_weight(source, default: float) -> float:
    """The entropy weight the champion's training ended with (history.json), `default` without one.

    It is part of the objective the generator was trained on, not optimizer state: restarting it at
    entropy_coef would pull a converged generator back toward uniform for the first warm steps."""
    path = source / "history.json"
    rows = json.loads(path.read_text()) if path.is_file() else []
    return float(rows[-1]["entropy_weight"]) if rows and "entropy_weight" in rows[-1] else default


def main(argv: list[str] | None = None) -> int:
    return run_stage("combo_policy", __doc__, _run_stage, argv)


def _run_stage(ctx: StageContext) -> None:
    run(ctx.config(ComboPolicyConfig), ctx.curated, ctx.params)


if __name__ == "__main__":
    sys.exit(main())
