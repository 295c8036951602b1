"""Stage `sft`: warm-start the policy LM on historical search ad texts.

Reads the curated `text_stats` (search placement) and the policy tokenizer: the shared
one (models/tokenizer/) for a scratch model, a pretrained base model's own otherwise;
trains `prompt -> ad text` (prompts in policy.prompt_format; with policy.lora only a LoRA
adapter trains) with a plain PyTorch loop on a deterministic train/val split; writes
models/sft/ (save_pretrained, safetensors + tokenizer + relate_policy.json + lineage.json; an
adapter artifact names its base model), metrics/sft.json and plots/sft/loss.{csv,png}.

`training.mode: warm` (pipelines/warm_start.py): the champion's SFT model and its own tokenizer
continue for `sft.warm_epochs` on the text_stats days after the champion's last; forced full when
the new texts' out-of-vocabulary rate is too high, the policy config changed (base model, prompt
format, shape) or the policy is a LoRA adapter.
"""
from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass

import torch

from pipelines.warm_start import FULL, Start, plan, training_block, write_lineage
from plumbing.atomic import require_finite, write_json
from plumbing.cli import StageContext, run_stage
from plumbing.config import require
from plumbing.errors import DataError
from plumbing.logs import get_logger
from plumbing.paths import METRICS, PLOTS, SFT_DIR, TOKENIZER_DIR, partitions
from plumbing.runtime import limit_torch_threads

log = get_logger("sft")


@dataclass
class SFTConfig:
    """The `sft:` params section."""

    epochs: int
    batch_size: int
    learning_rate: float
    weight_decay: float
    warmup_steps: int
    val_fraction: float
    max_tokens: int  # prompt + completion tokens per example
    max_examples: int  # 0 = every (vertical, keyword, ad text) of the logs
    torch_threads: int  # torch intra-op threads; 0 = torch's default
    seed: int
    log_every: int
    warm_epochs: int  # epochs over the new days' texts when continuing from the champion's model

    def __post_init__(self) -> None:
        p = "sft"
        for name in ("epochs", "batch_size", "warmup_steps", "log_every", "warm_epochs"):
            require(getattr(self, name) >= 1, f"{p}.{name}", f"must be >= 1, got {getattr(self, name)}")
        require(0 < self.learning_rate <= 10, f"{p}.learning_rate", f"must be in (0, 10], got {self.learning_rate}")
        require(self.weight_decay >= 0, f"{p}.weight_decay", f"must be >= 0, got {self.weight_decay}")
        require(0 < self.val_fraction < 0.5, f"{p}.val_fraction", f"must be in (0, 0.5), got {self.val_fraction}")
        require(self.max_tokens >= 16, f"{p}.max_tokens", f"must be >= 16, got {self.max_tokens}")
        require(self.max_examples >= 0, f"{p}.max_examples", f"must be >= 0, got {self.max_examples}")
        require(self.torch_threads >= 0, f"{p}.torch_threads", f"must be >= 0, got {self.torch_threads}")


def main(argv: list[str] | None = None) -> int:
    return run_stage("sft", __doc__, run, argv)


def run(ctx: StageContext) -> None:
    """Train the SFT policy on the logged ad texts up to the run's day (warm: continue the champion's
    on the days after its own)."""
    from relate_models import policy

    cfg = ctx.config(SFTConfig)
    policy_cfg = ctx.config(policy.PolicyConfig, "policy")
    limit_torch_threads(cfg.torch_threads)
    started = time.monotonic()
    rank, world = policy.join_process_group()  # torchrun / accelerate launch: N processes train one model

    start, tokenizer, corpus, through = _inputs(ctx, policy_cfg)
    if cfg.max_examples and len(corpus) > cfg.max_examples:
        corpus = corpus.sample(n=cfg.max_examples, random_state=cfg.seed).sort_index()
    train, val = _split_examples(cfg, tokenizer, corpus, policy_cfg.prompt_format)
    log.info("sft (%s): %d train / %d val examples from %d logged ad texts%s", start.mode, len(train), len(val),
             len(corpus), f"; process {rank} of {world}" if world > 1 else "")

    model = policy.load_policy(start.source, trainable=True)[0] if start.warm else policy.build_policy(policy_cfg,
                                                                                                        tokenizer)
    if torch.cuda.is_available() and policy_cfg.base_model != policy.SCRATCH:  # the scratch policy stays on the CPU
        model = model.cuda()
    log.info("policy %s: %d parameters", policy_cfg.base_model, policy.n_parameters(model))
    initial_val = policy.mean_loss(model, val, tokenizer.pad_token_id, cfg.batch_size * 2)
    # warm: a fresh AdamW and warmup (the champion's optimizer state is not published); the warmup
    # keeps the first steps of the reset moments small, so they do not jolt the loaded weights
    epochs = cfg.warm_epochs if start.warm else cfg.epochs
    curve = policy.fit_sft(
        model, tokenizer, train, val,
        epochs=epochs, batch_size=cfg.batch_size, lr=cfg.learning_rate, weight_decay=cfg.weight_decay,
        warmup_steps=cfg.warmup_steps, seed=cfg.seed, log=log.info, log_every=cfg.log_every,
    ) if train else [{"epoch": 0, "step": 0, "train_loss": initial_val, "val_loss": initial_val, "seconds": 0.0}]
    prompts = [policy.format_prompt(tokenizer, policy.prompt_text(v, k), policy_cfg.prompt_format)
               for v, k in corpus[["vertical", "keyword"]].head(3).values]
    for s in policy.generate(model, tokenizer, prompts, n=1, temperature=0.0) if prompts else []:
        log.info("sample: %s", s[0])
    best = min(curve, key=lambda r: r["val_loss"])
    metrics = {
        "n_train": len(train),
        "n_val": len(val),
        "parameters": policy.n_parameters(model),
        "initial_val_loss": initial_val,
        "train_loss": curve[-1]["train_loss"],
        "val_loss": best["val_loss"],
        "best_epoch": best["epoch"],
        "val_perplexity": float(torch.exp(torch.tensor(best["val_loss"]))),
        "training": training_block(start, start.new_days(_days(ctx))),
        "seconds": round(time.monotonic() - started, 1),
    }
    require_finite("sft", "metrics", metrics)  # a diverged run replaces neither the model nor the metrics
    if rank != 0:  # every rank holds the same model; one writes it
        return
    lineage = start.lineage(through)
    policy.save_policy(model, tokenizer, SFT_DIR, meta=policy.policy_meta(policy_cfg),
                       extra=lambda staging: write_lineage(staging, lineage))
    write_json(METRICS / "sft.json", metrics)
    policy.write_curves(curve, PLOTS / "sft" / "loss.csv", PLOTS / "sft" / "loss.png", "epoch",
                        ["train_loss", "val_loss"], "SFT loss")
    log.info("sft done: val loss %.4f (from %.4f) in %.1fs", metrics["val_loss"], initial_val, metrics["seconds"])


def _days(ctx: StageContext) -> list[str]:
    return partitions(ctx.curated.table("text_stats"))


def _inputs(ctx: StageContext, policy_cfg) -> tuple:
    """(start, tokenizer, corpus, trained_through): warm, the champion's tokenizer and the new days'
    rows; full (or forced full), today's tokenizer and every day's rows."""
    from relate_models import policy

    table, days = ctx.curated.table("text_stats"), _days(ctx)
    through = days[-1] if days else None
    # no partition: load_search_corpus below says so (in full mode, as always)
    start = plan("sft", "sft", ctx.params, through) if through else Start("sft", FULL, "no text_stats partition")
    start = check_champion_policy(start, policy_cfg)
    if start.warm:
        from transformers import AutoTokenizer

        # the tokenizer the champion was trained with, not models/tokenizer (a full train_ctcvr may
        # have rebuilt that one since)
        tokenizer = AutoTokenizer.from_pretrained(str(start.source), local_files_only=True)
        new_days = start.new_days(days)
        corpus = policy.load_search_corpus(table, new_days)
        if policy_cfg.base_model == policy.SCRATCH:  # a pretrained base's tokenizer is the same after a full run
            trained = policy.load_search_corpus(table, [d for d in days if d not in new_days])["ad_text"]
            start = start.check_vocabulary(tokenizer, corpus["ad_text"], trained)
        if start.warm:
            return start, tokenizer, corpus, through
    return start, policy.policy_tokenizer(policy_cfg, TOKENIZER_DIR), policy.load_search_corpus(table), through


SHAPE_FIELDS = {"hidden_size": "hidden_size", "num_layers": "num_hidden_layers", "num_heads": "num_attention_heads",
                "intermediate_size": "intermediate_size", "max_positions": "max_position_embeddings"}


def check_champion_policy(start: Start, policy_cfg) -> Start:
    """`start`, or a full retrain when the champion's policy is not the model `policy:` describes today
    (another base model, prompt format or shape) or is a LoRA adapter."""
    from relate_models import policy

    if not start.warm:
        return start
    meta, today = policy.read_meta(start.source), policy.policy_meta(policy_cfg)
    if meta["adapter"] or today["adapter"]:
        return start.full("warm starts of LoRA adapter policies are not built (policy.lora.enabled or an adapter "
                          "champion): the adapter is retrained in full")
    changed = policy.meta_changes(meta, today)
    if policy_cfg.base_model == policy.SCRATCH and not changed:
        config = json.loads((start.source / "config.json").read_text(encoding="utf-8"))
        changed = [f"{k} {config.get(c)} -> {getattr(policy_cfg, k)}" for k, c in SHAPE_FIELDS.items()
                   if config.get(c) != getattr(policy_cfg, k)]
    if changed:
        return start.full(f"the policy config changed since the champion's {start.source.name} model: "
                          + ", ".join(changed))
    return start


def _split_examples(cfg: SFTConfig, tokenizer, corpus, prompt_format: str) -> tuple[list, list]:
    """Encoded (train, val) examples; the split is a stable hash of each row, not a draw."""
    from relate_models import policy

    rows = list(zip(corpus["vertical"], corpus["keyword"], corpus["ad_text"]))
    is_val = [policy.stable_fraction(v, k, t) < cfg.val_fraction for v, k, t in rows]
    prompts = {(v, k): policy.format_prompt(tokenizer, policy.prompt_text(v, k), prompt_format) for v, k, _ in rows}
    examples = [policy.encode_example(tokenizer, prompts[v, k], t, cfg.max_tokens, prompt_format) for v, k, t in rows]
    train = [e for e, val in zip(examples, is_val) if not val]
    val = [e for e, val in zip(examples, is_val) if val]
    if not train or not val:
        raise DataError(f"sft: need both train and val examples, got {len(train)} train / {len(val)} val")
    return train, val


if __name__ == "__main__":
    sys.exit(main())
