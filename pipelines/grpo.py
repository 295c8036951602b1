"""Stage `grpo`: RELATE, the SFT policy tuned with GRPO on multi-dimensional rewards.

Reads models/sft/ (policy + its tokenizer and prompt format; an adapter SFT policy keeps
training its adapter, the KL reference being TRL's frozen copy of the SFT adapter), models/ctcvr/ (the learned CTCVR reward model),
the curated search logs (prompts and historical ad texts) and the compliance lexicon (with its dated
rules in effect on the run's day: the --ds, else the newest curated partition).
Writes the prompt split (data/prompts/: train.jsonl for GRPO, eval.jsonl held out for
evaluation), models/relate/ (save_pretrained), metrics/grpo.json (learned rewards of the
SFT and RELATE policies on the held-out prompts, speed) and the per-reward training
curves plots/grpo/rewards.{csv,png}. Never reads data/sim_truth or relate_sim.

`training.mode: warm` (pipelines/warm_start.py): the champion's RELATE policy (registry
artifact `policy`) trains `grpo.warm_max_steps` steps on the same prompts, with the SFT model of
the warm chain's full retrain as the KL reference (`kl_reference`); models/relate/ gets a lineage.json.
"""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from pipelines.warm_start import Start, plan, training_block, write_lineage
from plumbing.atomic import directory, require_finite, write_json
from plumbing.cli import StageContext, run_stage
from plumbing.errors import DataError, MissingArtifact
from plumbing.logs import get_logger
from plumbing.paths import ALL_CURATED, CTCVR_DIR, DATA, METRICS, PLOTS, RELATE_DIR, SFT_DIR, CuratedReader, partitions
from plumbing.runtime import limit_torch_threads

log = get_logger("grpo")
PROMPTS_DIR = DATA / "prompts"


def main(argv: list[str] | None = None) -> int:
    return run_stage("grpo", __doc__, run, argv)


def run(ctx: StageContext) -> None:
    """GRPO from the SFT policy (warm: from the champion's RELATE policy) on the prompts logged up to the run's day."""
    from relate_models.grpo_trainer import GRPOStageConfig

    cfg = ctx.config(GRPOStageConfig)
    days = partitions(ctx.curated.table("text_stats"))
    start = plan("grpo", "policy", ctx.params, days[-1]) if days else None  # none: _prompt_split says so
    train_relate(cfg, ctx.curated, start=check_champion_relate(start) if start else None)


def kl_reference(start: Start) -> Path:
    """A warm GRPO update's KL reference: the SFT model the chain's full retrain published
    (`registry/<first version of the chain>/sft`), the one that run's GRPO started from.

    Not the champion's RELATE policy: the reference holds no GRPO update, so day after day of warm
    steps cannot compound away from the logged texts by more than beta allows. Not today's SFT either:
    it continues on the new days, whose search traffic is mostly the champion's own texts, so an anchor
    that follows it follows the champion's hook (docs/decisions.md, the closed loop's four arms)."""
    return Path(start.source).parent.parent / start.chain[0] / "sft"


def check_champion_relate(start: Start) -> Start:
    """`start`, or a full run when the champion's RELATE policy cannot continue with today's SFT
    policy's tokenizer against its KL reference: either is missing, an adapter, or has another base
    model, prompt format, shape or tokenizer."""
    if not start.warm or not SFT_DIR.is_dir():  # no SFT policy: _load_models says so
        return start
    reference = kl_reference(start)
    if not reference.is_dir():
        return start.full(f"the KL reference, the chain's full SFT model {reference}, is not here (dvc pull?)")
    for other, what in ((SFT_DIR, "today's SFT policy"), (reference, f"the KL reference {reference}")):
        changed = _policy_changes(start.source, other)
        if changed:
            return start.full(f"{what} differs from the champion's RELATE policy: {', '.join(changed)}")
    return start


def _policy_changes(champion, other) -> list[str]:
    """What keeps the champion's RELATE policy from training beside the saved policy `other`."""
    from relate_models import policy

    meta, theirs = policy.read_meta(champion), policy.read_meta(other)
    if meta["adapter"] or theirs["adapter"]:
        return ["a LoRA adapter (warm starts of LoRA adapter policies are not built: TRL's KL reference for an "
                "adapter is a copy of the loaded one)"]
    changed = policy.meta_changes(meta, theirs)
    changed += [f"weights {d}" for d in _shape_diff(champion, other)] if not changed else []
    if not changed and _vocab(champion) != _vocab(other):
        changed.append("tokenizer vocabulary")
    return changed


def _reference_record(start: Start) -> dict:
    """The lineage's `kl_reference`: the registry artifact a warm update was anchored to."""
    return {"kl_reference": "/".join(kl_reference(start).parts[-2:])} if start.warm else {}


def _shape_diff(a, b) -> list[str]:
    """What differs between two saved policies' architectures: model type, weight names and shapes."""
    ca, cb = (json.loads((Path(d) / "config.json").read_text(encoding="utf-8")) for d in (a, b))
    if ca.get("model_type") != cb.get("model_type"):
        return [f"model_type {ca.get('model_type')} -> {cb.get('model_type')}"]
    sa, sb = _weight_shapes(a), _weight_shapes(b)
    return [f"{k} {sa.get(k)} -> {sb.get(k)}" for k in sorted(set(sa) | set(sb)) if sa.get(k) != sb.get(k)][:5]


def _weight_shapes(directory) -> dict[str, list[int]]:
    from safetensors import safe_open

    shapes = {}
    for file in sorted(Path(directory).glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as weights:
            shapes.update({k: weights.get_slice(k).get_shape() for k in weights.keys()})
    return shapes


def _vocab(directory) -> dict:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(directory), local_files_only=True).get_vocab()


def train_relate(cfg, curated: CuratedReader = ALL_CURATED, output_dir=RELATE_DIR,
                 metrics_path=METRICS / "grpo.json", plots_dir=PLOTS / "grpo", prompts_dir=PROMPTS_DIR,
                 start: Start | None = None) -> dict:
    """GRPO from models/sft with `cfg` (a GRPOStageConfig); writes the policy to `output_dir`.

    `start` (the stage's warm-start plan; None: full, as the ablation trains): warm, the champion's
    RELATE policy trains `cfg.warm_max_steps` steps. `prompts_dir=None`
    skips writing the prompt split (the ablation reuses the stage's split); returns the metrics also
    written to `metrics_path`. The KL reference is models/sft in full, `kl_reference` warm.
    """
    from relate_models import policy
    from relate_models.grpo_trainer import reward_context, reward_curves
    from relate_models.rewards import build_rewards, score_texts

    limit_torch_threads(cfg.torch_threads)
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
    all_days = partitions(curated.table("text_stats"))
    days = start.new_days(all_days) if start is not None else []
    model, trainer = _trainer(cfg, start, model, tokenizer, rewards, train_prompts, meta)
    train_seconds = _timed_train(trainer)
    if not trainer.accelerator.is_main_process:  # `accelerate launch`: one process writes the artifacts
        return {}
    model = trainer.model.eval()
    relate_eval = held_out_rewards(model)
    log.info("RELATE policy on held-out prompts: %s", _fmt(relate_eval))

    curves = reward_curves(trainer.state.log_history, names)
    metrics = _train_metrics(cfg, trainer.state, train_seconds, sft_eval, relate_eval, curves)
    metrics.update({"training": training_block(start, days)} if start else {})
    require_finite("grpo", "metrics", metrics)  # a diverged run replaces neither the model nor the metrics
    lineage = start.lineage(all_days[-1], **_reference_record(start)) if start else None
    policy.save_policy(model, tokenizer, output_dir, meta, lambda staging: lineage and write_lineage(staging, lineage))
    policy.write_curves(curves, plots_dir / "rewards.csv", plots_dir / "rewards.png", "step",
                        names + ["kl", "violation_rate"], "RELATE GRPO: mean reward per training step")
    metrics["seconds"], metrics["compliance_as_of"] = round(time.monotonic() - started, 1), as_of
    write_json(metrics_path, metrics)
    log.info("grpo done: %d steps in %.1fs (%.2f steps/s)", metrics["steps"], train_seconds,
             metrics["steps_per_second"])
    return metrics


def _trainer(cfg, start: Start | None, sft_model, tokenizer, rewards, train_prompts, meta):
    """(the policy to train, its trainer): today's SFT policy against itself as the KL reference, or
    warm the champion's RELATE policy against `kl_reference`."""
    from relate_models import policy
    from relate_models.grpo_trainer import build_trainer

    warm = start is not None and start.warm
    model = policy.load_policy(start.source, trainable=True)[0] if warm else sft_model
    steps = cfg.warm_max_steps if warm else cfg.max_steps
    on_cpu = {"use_cpu": True} if meta["base_model"] == policy.SCRATCH else {}  # scratch: the CPU, as always
    # warm: a fresh AdamW (the champion's optimizer state is not published); GRPO has no warmup and
    # clips its ratios, so the reset moments start with small, bounded steps
    reference = kl_reference(start) if warm else None  # None: a frozen copy of the SFT policy it starts from
    trainer = build_trainer(cfg, model, tokenizer, rewards, train_prompts, reference=reference, max_steps=steps,
                            **on_cpu)
    return model, trainer


def _timed_train(trainer) -> float:
    """Seconds `trainer.train()` took."""
    started = time.monotonic()
    trainer.train()
    return time.monotonic() - started


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
