"""The RELATE ablation ladder: which reward part buys what, measured by the same simulated A/B.

    python -m pipelines.ablation [--params params.yaml] [--skip-training]

Rungs (cumulative, each a GRPO run from the same SFT policy with the `grpo:` section's
settings and reward weights, only the reward set and credit assignment overridden):
  structural  quality_structural only, sequence-level
  ctcvr       + ctcvr
  diversity   + diversity
  compliance  + quality_compliance (sequence-level credit)
  credit      + token-level credit assignment (= RELATE)
Each policy goes to models/ablation/<rung>/; all rungs and the SFT policy are then served
on the same held-out traffic by the evaluate stage's A/B harness (pipelines.evaluate_harness:
the oracle stays behind it). Writes metrics/ablation.json and reports/ablation.md. Not part of the default
`dvc repro` (five GRPO runs): run it on demand.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from dataclasses import dataclass

from pipelines.ab_report import bar_chart, markdown_table
from plumbing.atomic import undefined_as_null, write_json, write_text
from plumbing.cli import StageContext, run_stage
from plumbing.config import require
from plumbing.errors import MissingArtifact
from plumbing.logs import get_logger
from plumbing.paths import ABLATION_DIR, ALL_CURATED, METRICS, PLOTS, REPORTS, SFT_DIR, CuratedReader

log = get_logger("ablation")
TRAIN_METRICS = "grpo_metrics.json"  # beside each rung's policy (written after the policy directory)
LADDER: dict[str, tuple[tuple[str, ...], bool]] = {  # rung -> (rewards, token-level credit assignment)
    "structural": (("quality_structural",), False),
    "ctcvr": (("ctcvr", "quality_structural"), False),
    "diversity": (("ctcvr", "quality_structural", "diversity"), False),
    "compliance": (("ctcvr", "quality_structural", "quality_compliance", "diversity"), False),
    "credit": (("ctcvr", "quality_structural", "quality_compliance", "diversity"), True),
}


@dataclass
class AblationConfig:
    """The `ablation:` params section."""

    n_impressions: int  # A/B impressions per arm (overrides evaluate.n_impressions)
    rungs: list[str]

    def __post_init__(self) -> None:
        require(self.n_impressions >= 1, "ablation.n_impressions", f"must be >= 1, got {self.n_impressions}")
        require(bool(self.rungs), "ablation.rungs", "must name at least one rung")
        unknown = [r for r in self.rungs if r not in LADDER]
        require(not unknown, "ablation.rungs", f"unknown rung(s) {unknown}; known: {', '.join(LADDER)}")
        require(len(set(self.rungs)) == len(self.rungs), "ablation.rungs", "names a rung twice")
        self.rungs = [r for r in LADDER if r in self.rungs]  # always in ladder order


def rung_config(grpo_cfg, rung: str):
    """The grpo config of one rung: the stage's weights for the rung's rewards, its credit flag."""
    names, credit = LADDER[rung]
    weights = {name: grpo_cfg.rewards.get(name, 1.0) for name in names}
    return dataclasses.replace(grpo_cfg, rewards=weights, credit_assignment=credit)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--skip-training", action="store_true",
                        help="evaluate the policies already in models/ablation/ (no GRPO runs)")


def main(argv: list[str] | None = None) -> int:
    return run_stage("ablation", __doc__, run, argv, ds=None, add_arguments=add_arguments)


def run(ctx: StageContext) -> None:
    """Train (or with --skip-training, read) every rung, then serve them all in one simulated A/B."""
    from pipelines.evaluate import EvaluateConfig
    from relate_models.grpo_trainer import GRPOStageConfig

    cfg = ctx.config(AblationConfig)
    grpo_cfg = ctx.config(GRPOStageConfig, "grpo")
    eval_cfg = dataclasses.replace(ctx.config(EvaluateConfig, "evaluate"), n_impressions=cfg.n_impressions)
    started = time.monotonic()
    training = {rung: train_rung(grpo_cfg, rung, ctx.args.skip_training, ctx.curated) for rung in cfg.rungs}
    arms, setup, eval_day = evaluate_rungs(cfg, eval_cfg, ctx)
    for rung in cfg.rungs:
        names, credit = LADDER[rung]
        arms[rung].update({"rewards": list(names), "credit_assignment": credit, **training.get(rung, {})})
    metrics = {"arms": arms, "rungs": cfg.rungs, "eval_day": eval_day, "setup": setup,
               "seconds": round(time.monotonic() - started, 1)}
    write_json(METRICS / "ablation.json", undefined_as_null(metrics))
    bar_chart(arms, PLOTS / "ablation" / "ab.png", "Ablation ladder: simulated A/B")
    write_text(REPORTS / "ablation.md", render_report(arms, cfg, eval_cfg))
    log.info("ablation done in %.1fs", metrics["seconds"])


def train_rung(grpo_cfg, rung: str, skip_training: bool, curated: CuratedReader = ALL_CURATED) -> dict:
    """One rung's GRPO run (or its recorded metrics with skip_training): time, steps, learned held-out gain."""
    from pipelines import grpo

    out_dir = ABLATION_DIR / rung
    if skip_training:
        if not (out_dir / TRAIN_METRICS).is_file():
            raise MissingArtifact(f"--skip-training: no trained rung at {out_dir}; run without it first")
        metrics = json.loads((out_dir / TRAIN_METRICS).read_text(encoding="utf-8"))
    else:
        log.info("ablation rung %s: rewards %s, credit assignment %s", rung, *LADDER[rung])
        metrics = grpo.train_relate(rung_config(grpo_cfg, rung), curated, output_dir=out_dir,
                                    metrics_path=out_dir / TRAIN_METRICS,
                                    plots_dir=PLOTS / "ablation" / rung, prompts_dir=None)
    return {"train_seconds": metrics["train_seconds"], "steps": metrics["steps"],
            "learned_held_out_gain": metrics["held_out"]["gain"]}


def evaluate_rungs(cfg: AblationConfig, eval_cfg, ctx: StageContext) -> tuple[dict, dict, str | None]:
    """(per-arm summaries, setup, eval day) of SFT and every rung's plain samples on the same held-out traffic."""
    from pipelines.evaluate_harness import Harness, generate_candidates, setup_info

    harness = Harness.build(eval_cfg, ctx.params, curated=ctx.curated)
    outcomes = {"sft": harness.sampled_arm("sft", generate_candidates(SFT_DIR, harness.prompts, eval_cfg))}
    for rung in cfg.rungs:
        texts = generate_candidates(ABLATION_DIR / rung, harness.prompts, eval_cfg)
        outcomes[rung] = harness.sampled_arm(rung, texts)
    return harness.summarize_all(outcomes), setup_info(harness), harness.eval_day


def render_report(arms: dict, cfg: AblationConfig, eval_cfg) -> str:
    ladder = "\n".join(f"- `{r}`: rewards {', '.join(LADDER[r][0])}; "
                       f"{'token-level' if LADDER[r][1] else 'sequence-level'} credit" for r in cfg.rungs)
    return "\n".join([
        "# RELATE ablation ladder", "",
        f"Each rung is a GRPO run from the same SFT policy; every arm serves the same {cfg.n_impressions:,} logged "
        f"held-out search impressions (one of {eval_cfg.texts_per_prompt} sampled texts per impression), outcomes "
        "from the simulator's ground truth. Uplifts are against SFT, paired 95% intervals.", "",
        ladder, "",
        markdown_table(arms), "",
        "![ablation](../plots/ablation/ab.png)", "",
    ])


if __name__ == "__main__":
    sys.exit(main())
