"""Stage `grpo`: RELATE, the SFT policy tuned with GRPO on multi-dimensional rewards.

Reads models/sft/ (policy + its tokenizer and prompt format; an adapter SFT policy keeps
training its adapter, the KL reference being TRL's frozen copy of the SFT adapter), models/ctcvr/ (the learned CTCVR reward model),
the curated search logs (prompts and historical ad texts) and the compliance lexicon (with its dated
rules in effect on the run's day: the --ds, else the newest curated partition).
Writes the prompt split (data/prompts/: train.jsonl for GRPO, eval.jsonl held out for
evaluation), models/relate/ (save_pretrained), metrics/grpo.json (learned rewards of the
SFT and RELATE policies on the held-out prompts, speed) and the per-reward training
curves plots/grpo/rewards.{csv,png}. Never reads data/sim_truth or relate_sim.
"""
from __future__ import annotations

import json
import os
import sys
import time

import torch

from plumbing.atomic import directory, require_finite, write_json
from plumbing.cli import StageContext, run_stage
from plumbing.errors import DataError, MissingArtifact
from plumbing.logs import get_logger
from plumbing.paths import ALL_CURATED, CTCVR_DIR, DATA, METRICS, PLOTS, RELATE_DIR, SFT_DIR, CuratedReader

log = get_logger("grpo")
PROMPTS_DIR = DATA / "prompts"


def main(argv: list[str] | None = None) -> int:
    return run_stage("grpo", __doc__, run, argv)


def run(ctx: StageContext) -> None:
    """GRPO from the SFT policy on the prompts logged up to the run's day."""
    from relate_models.grpo_trainer import GRPOStageConfig

    train_relate(ctx.config(GRPOStageConfig), ctx.curated)


def train_relate(cfg, curated: CuratedReader = ALL_CURATED, output_dir=RELATE_DIR,
                 metrics_path=METRICS / "grpo.json", plots_dir=PLOTS / "grpo", prompts_dir=PROMPTS_DIR) -> dict:
    """GRPO from models/sft with `cfg` (a GRPOStageConfig); writes the policy to `output_dir`.

    `prompts_dir=None` skips writing the prompt split (the ablation reuses the stage's split);
    returns the metrics also written to `metrics_path`.
    """
    from relate_models import policy
    from relate_models.grpo_trainer import build_trainer, reward_context, reward_curves
    from relate_models.rewards import build_rewards, score_texts

    if cfg.torch_threads:
        torch.set_num_threads(cfg.torch_threads)
    started = time.monotonic()
    model, tokenizer, scorer = _load_models()
    corpus, train_prompts, eval_prompts = _prompt_split(cfg, curated, prompts_dir)
    meta = policy.read_meta(SFT_DIR)
    train_prompts, eval_prompts = (
        [{**r, "prompt": policy.format_prompt(tokenizer, r["prompt"], meta["prompt_format"])} for r in rows]
        for rows in (train_prompts, eval_prompts))
    as_of = curated.run_day()  # the compliance rules in effect on the run's day
    rewards = build_rewards(list(cfg.rewards), reward_context(cfg, scorer, corpus, eos_token_id=tokenizer.eos_token_id,
                                                              as_of=as_of))
    names = [r.name for r in rewards]

    def held_out_rewards(m) -> dict[str, float]:
        texts = policy.generate(
            m, tokenizer, [r["prompt"] for r in eval_prompts], n=cfg.eval_generations,
            max_new_tokens=cfg.max_completion_length, temperature=cfg.temperature, top_p=cfg.top_p, seed=cfg.seed,
        )
        return score_texts(rewards, eval_prompts, texts)

    sft_eval = held_out_rewards(model)
    log.info("SFT policy on held-out prompts: %s", _fmt(sft_eval))
    on_cpu = {"use_cpu": True} if meta["base_model"] == policy.SCRATCH else {}  # scratch: the CPU, as always
    trainer = build_trainer(cfg, model, tokenizer, rewards, train_prompts, **on_cpu)
    train_started = time.monotonic()
    trainer.train()
    train_seconds = time.monotonic() - train_started
    if not trainer.accelerator.is_main_process:  # `accelerate launch`: one process writes the artifacts
        return {}
    model = trainer.model.eval()
    relate_eval = held_out_rewards(model)
    log.info("RELATE policy on held-out prompts: %s", _fmt(relate_eval))

    curves = reward_curves(trainer.state.log_history, names)
    metrics = _train_metrics(cfg, trainer.state, train_seconds, sft_eval, relate_eval, curves)
    require_finite("grpo", "metrics", metrics)  # a diverged run replaces neither the model nor the metrics
    policy.save_policy(model, tokenizer, output_dir, meta=meta)
    policy.write_curves(curves, plots_dir / "rewards.csv", plots_dir / "rewards.png", "step",
                        names + ["kl", "violation_rate"], "RELATE GRPO: mean reward per training step")
    metrics["seconds"], metrics["compliance_as_of"] = round(time.monotonic() - started, 1), as_of
    write_json(metrics_path, metrics)
    log.info("grpo done: %d steps in %.1fs (%.2f steps/s)", metrics["steps"], train_seconds,
             metrics["steps_per_second"])
    return metrics


def _load_models():
    """(SFT policy, its tokenizer, the CTCVR scorer)."""
    from relate_models import policy
    from relate_models.ctcvr import CTCVRScorer

    model, tokenizer = policy.load_policy(SFT_DIR, trainable=True)
    try:
        scorer = CTCVRScorer.load(CTCVR_DIR)
    except RuntimeError as err:  # weights saved by another version of the model code
        raise MissingArtifact(f"CTCVR artifact {CTCVR_DIR} does not match relate_models.ctcvr; rerun train_ctcvr "
                         f"({str(err).splitlines()[0]})") from None
    return model, tokenizer, scorer


def _prompt_split(cfg, curated: CuratedReader, prompts_dir) -> tuple:
    """(search corpus, train prompts, held-out eval prompts); the split is written to `prompts_dir` unless None."""
    from relate_models import policy

    corpus = policy.load_search_corpus(curated.table("text_stats"))
    segments = None if cfg.user_segment else policy.modal_user_segments(curated.table("labeled_impressions"))
    train_prompts, eval_prompts = policy.split_prompts(corpus, cfg.eval_fraction, segments, cfg.user_segment)
    if not train_prompts or not eval_prompts:
        raise DataError(f"grpo: need train and eval prompts, got {len(train_prompts)} / {len(eval_prompts)}")
    if prompts_dir is not None and os.environ.get("RANK", "0") == "0":  # under a launcher: rank 0 writes
        with directory(prompts_dir) as staging:
            for name, rows in (("train.jsonl", train_prompts), ("eval.jsonl", eval_prompts)):
                (staging / name).write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in rows),
                                            encoding="utf-8")
    log.info("grpo: %d train prompts, %d held-out eval prompts", len(train_prompts), len(eval_prompts))
    return corpus, train_prompts, eval_prompts


def _train_metrics(cfg, state, train_seconds: float, sft_eval: dict, relate_eval: dict, curves: list) -> dict:
    """metrics/grpo.json without its total `seconds`."""
    return {
        "steps": int(state.global_step),
        "rewards": dict(cfg.rewards),
        "credit_assignment": cfg.credit_assignment,
        "train_seconds": round(train_seconds, 1),
        "steps_per_second": state.global_step / max(train_seconds, 1e-9),
        "tokens_per_second": int(state.num_input_tokens_seen) / max(train_seconds, 1e-9),
        "held_out": {"sft": sft_eval, "relate": relate_eval,
                     "gain": {k: relate_eval[k] - sft_eval[k] for k in sft_eval}},
        "final_train_rewards": curves[-1] if curves else {},
    }


def _fmt(values: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.4g}" for k, v in values.items())


if __name__ == "__main__":
    sys.exit(main())
