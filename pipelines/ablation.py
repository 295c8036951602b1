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
on the same held-out traffic by `pipelines.evaluate`'s A/B harness (the oracle stays in that
module). Writes metrics/ablation.json and reports/ablation.md. Not part of the default
`dvc repro` (five GRPO runs): run it on demand.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from dataclasses import dataclass

from plumbing.atomic import write_json, write_text
from plumbing.logs import get_logger
from plumbing.config import ConfigError, load_config, require
from plumbing.paths import METRICS, MODELS, PLOTS

log = get_logger("ablation")
ABLATION_DIR = MODELS / "ablation"
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default=None, help="params file (default: params.yaml or $RELATE_PARAMS)")
    parser.add_argument("--skip-training", action="store_true",
                        help="evaluate the policies already in models/ablation/ (no GRPO runs)")
    args = parser.parse_args(argv)
    try:
        from pipelines import evaluate, grpo
        from relate_models.grpo_trainer import GRPOStageConfig

        cfg = load_config(AblationConfig, "ablation", args.params)
        grpo_cfg = load_config(GRPOStageConfig, "grpo", args.params)
        eval_cfg = dataclasses.replace(load_config(evaluate.EvaluateConfig, "evaluate", args.params),
                                       n_impressions=cfg.n_impressions)
        started = time.monotonic()
        training = {}
        for rung in cfg.rungs:
            out_dir = ABLATION_DIR / rung
            if args.skip_training:
                if not (out_dir / TRAIN_METRICS).is_file():
                    raise FileNotFoundError(f"--skip-training: no trained rung at {out_dir}; run without it first")
                metrics = json.loads((out_dir / TRAIN_METRICS).read_text(encoding="utf-8"))
            else:
                log.info("ablation rung %s: rewards %s, credit assignment %s", rung, *LADDER[rung])
                metrics = grpo.train_relate(rung_config(grpo_cfg, rung), output_dir=out_dir,
                                            metrics_path=out_dir / TRAIN_METRICS,
                                            plots_dir=PLOTS / "ablation" / rung, prompts_dir=None)
            training[rung] = {"train_seconds": metrics["train_seconds"], "steps": metrics["steps"],
                              "learned_held_out_gain": metrics["held_out"]["gain"]}

        harness = evaluate.Harness.build(eval_cfg, args.params)
        outcomes = {"sft": harness.sampled_arm(
            "sft", evaluate.generate_candidates(evaluate.SFT_DIR, harness.prompts, eval_cfg))}
        for rung in cfg.rungs:
            texts = evaluate.generate_candidates(ABLATION_DIR / rung, harness.prompts, eval_cfg)
            outcomes[rung] = harness.sampled_arm(rung, texts)
        arms = harness.summarize_all(outcomes)
        for rung in cfg.rungs:
            names, credit = LADDER[rung]
            arms[rung].update({"rewards": list(names), "credit_assignment": credit, **training.get(rung, {})})
        metrics = {"arms": arms, "rungs": cfg.rungs, "setup": evaluate.setup_info(harness),
                   "seconds": round(time.monotonic() - started, 1)}
        write_json(METRICS / "ablation.json", evaluate._finite(metrics))
        evaluate.bar_chart(arms, PLOTS / "ablation" / "ab.png", "Ablation ladder: simulated A/B")
        write_text(evaluate.REPORTS / "ablation.md", render_report(arms, cfg, eval_cfg))
        log.info("ablation done in %.1fs", metrics["seconds"])
        return 0
    except (ConfigError, ValueError, FileNotFoundError) as err:
        log.error("ablation failed: %s", err)
        return 2


def render_report(arms: dict, cfg: AblationConfig, eval_cfg) -> str:
    from pipelines.evaluate import markdown_table

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
