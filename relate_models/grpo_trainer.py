"""RELATE's GRPO: TRL's GRPOTrainer with granularity-aware (batch, tokens) advantages.

TRL (1.16) computes rewards per function and a (batch,) advantage; `_compute_loss`
uses a 2-D advantage as it is. `RelateGRPOTrainer` keeps TRL's generation, reward calls,
KL and clipped loss, and replaces only the advantage with `credit.combine_advantages`:
per-group normalised rewards, sequence-level credit for ctcvr/structural quality,
token-level credit for compliance/diversity spans, compliance as a constraint.
"""
from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
from trl import GRPOConfig, GRPOTrainer

from plumbing.config import require
from relate_models import credit
from relate_models.rewards import TOKEN, Reward, validate_weights


@dataclass
class GRPOStageConfig:
    """The `grpo:` params section."""

    rewards: dict
    credit_assignment: bool  # False: every reward sequence-level (the ablation)
    beta: float  # KL to the reference (the SFT policy); 0 disables the reference model
    learning_rate: float
    max_steps: int
    warm_max_steps: int  # optimizer steps when continuing from the champion's policy
    prompts_per_step: int
    num_generations: int
    max_completion_length: int
    temperature: float
    top_p: float
    epsilon: float
    num_iterations: int
    compliance_penalty: float
    min_chars: int
    max_chars: int
    group_ngram: int
    copy_ngram: int
    user_segment: str | None  # context for the CTCVR reward; None: each prompt's most logged segment
    eval_fraction: float  # share of (vertical, keyword) prompts held out for evaluation
    logging_steps: int
    eval_generations: int  # texts per held-out prompt when comparing the SFT and RELATE policies
    torch_threads: int  # torch intra-op threads; 0 = torch's default
    lexicon: str
    use_vllm: bool  # TRL generation through vLLM, colocate mode (CUDA only)
    seed: int

    def __post_init__(self) -> None:
        p = "grpo"
        self.rewards = validate_weights(self.rewards, f"{p}.rewards")
        require(self.beta >= 0, f"{p}.beta", f"must be >= 0, got {self.beta}")
        require(0 < self.learning_rate <= 10, f"{p}.learning_rate", f"must be in (0, 10], got {self.learning_rate}")
        for name in ("max_steps", "warm_max_steps", "prompts_per_step", "max_completion_length", "num_iterations",
                     "logging_steps", "eval_generations"):
            require(getattr(self, name) >= 1, f"{p}.{name}", f"must be >= 1, got {getattr(self, name)}")
        require(self.num_generations >= 2, f"{p}.num_generations", f"must be >= 2 (GRPO groups), got {self.num_generations}")
        require(self.temperature > 0, f"{p}.temperature", f"must be > 0, got {self.temperature}")
        require(0 < self.top_p <= 1, f"{p}.top_p", f"must be in (0, 1], got {self.top_p}")
        require(0 < self.epsilon < 1, f"{p}.epsilon", f"must be in (0, 1), got {self.epsilon}")
        require(self.compliance_penalty > 0, f"{p}.compliance_penalty", f"must be > 0, got {self.compliance_penalty}")
        require(1 <= self.min_chars < self.max_chars, f"{p}.min_chars", "must satisfy 1 <= min_chars < max_chars")
        require(self.group_ngram >= 1, f"{p}.group_ngram", f"must be >= 1, got {self.group_ngram}")
        require(self.copy_ngram >= 1, f"{p}.copy_ngram", f"must be >= 1, got {self.copy_ngram}")
        require(self.torch_threads >= 0, f"{p}.torch_threads", f"must be >= 0, got {self.torch_threads}")
        require(0 < self.eval_fraction < 1, f"{p}.eval_fraction", f"must be in (0, 1), got {self.eval_fraction}")

    @property
    def batch_size(self) -> int:
        return self.prompts_per_step * self.num_generations


def reward_context(cfg: GRPOStageConfig, scorer, corpus, eos_token_id: int | None = None,
                   latin_script: bool = True, as_of: str | None = None):
    """The RewardContext of `cfg`'s rewards.

    `corpus`: policy.load_search_corpus's frame (its ad texts are the history a copy is
    checked against), or those historical texts themselves. `as_of`: the run's day; the
    compliance reward applies the dated rules in effect then (None: the lexicon alone).
    """
    from relate_models.compliance import ComplianceChecker
    from relate_models.rewards import RewardContext

    texts = corpus["ad_text"] if hasattr(corpus, "columns") else corpus
    return RewardContext(
        scorer=scorer,
        compliance=ComplianceChecker.load(cfg.lexicon, as_of=as_of),
        historical_texts=sorted(set(texts)),
        min_chars=cfg.min_chars,
        max_chars=cfg.max_chars,
        compliance_penalty=cfg.compliance_penalty,
        group_ngram=cfg.group_ngram,
        copy_ngram=cfg.copy_ngram,
        default_user_segment=cfg.user_segment,
        eos_token_id=eos_token_id,
        latin_script=latin_script,
    )


def build_trainer(cfg: GRPOStageConfig, model, tokenizer, rewards: Sequence[Reward], train_rows: Sequence[dict],
                  reference: str | os.PathLike | None = None, **trl_overrides) -> "RelateGRPOTrainer":
    """The RELATE trainer of `cfg`, as every caller builds it: the grpo stage, the ablation (through
    the stage), bench/ and the real-corpus check. `trl_overrides` go to `trl_config`.

    The KL reference (beta > 0) is a frozen copy of the saved policy `reference` (None: the
    directory `model` was loaded from, TRL's default; a full-weight model only)."""
    from datasets import Dataset

    check_vllm(cfg)
    if reference is not None and hasattr(model, "peft_config"):
        raise ValueError("build_trainer: a separate reference is for full-weight policies (TRL copies an adapter's)")
    loaded_from = model.config._name_or_path
    if reference is not None:  # TRL loads the reference from the policy config's path: point it there
        model.config._name_or_path = str(Path(reference).resolve())
    try:
        return RelateGRPOTrainer(
            model=model,
            processing_class=tokenizer,
            args=trl_config(cfg, **trl_overrides),
            train_dataset=Dataset.from_list(list(train_rows)),
            relate_rewards=rewards,
            credit_assignment=cfg.credit_assignment,
        )
    finally:
        model.config._name_or_path = loaded_from  # what the saved policy records stays its own


def check_vllm(cfg: GRPOStageConfig) -> None:
    """grpo.use_vllm needs a CUDA device and the vllm package: refused clearly otherwise."""
    if not cfg.use_vllm:
        return
    from plumbing.errors import ConfigError

    if not torch.cuda.is_available():
        raise ConfigError("grpo.use_vllm: vLLM generation needs a CUDA GPU and this machine has none; "
                          "set grpo.use_vllm: false")
    from trl.import_utils import is_vllm_available

    if not is_vllm_available():
        raise ConfigError("grpo.use_vllm: the vllm package is not installed (or not a version TRL supports); "
                          "pip install vllm, or set grpo.use_vllm: false")


def trl_config(cfg: GRPOStageConfig, output_dir: str | None = None, **overrides) -> GRPOConfig:
    """GRPOConfig: no checkpoints, no reporting, no gradient checkpointing; the CPU unless CUDA is
    there; vLLM colocate generation with grpo.use_vllm."""
    kwargs = dict(
        output_dir=output_dir or tempfile.mkdtemp(prefix="relate-grpo-"),
        per_device_train_batch_size=cfg.batch_size,
        num_generations=cfg.num_generations,
        max_completion_length=cfg.max_completion_length,
        max_steps=cfg.max_steps,
        learning_rate=cfg.learning_rate,
        beta=cfg.beta,
        epsilon=cfg.epsilon,
        num_iterations=cfg.num_iterations,
        temperature=cfg.temperature,
        top_p=cfg.top_p,
        reward_weights=list(cfg.rewards.values()),
        scale_rewards="group",
        multi_objective_aggregation="normalize_then_sum",
        logging_steps=cfg.logging_steps,
        save_strategy="no",
        report_to="none",
        use_cpu=not torch.cuda.is_available(),
        bf16=False,
        activation_checkpointing=False,
        remove_unused_columns=False,
        disable_tqdm=True,
        seed=cfg.seed,
        data_seed=cfg.seed,
        dataloader_num_workers=0,
    )
    if cfg.use_vllm:
        kwargs.update(use_vllm=True, vllm_mode="colocate")
    kwargs.update(overrides)
    return GRPOConfig(**kwargs)


class RelateGRPOTrainer(GRPOTrainer):
    """GRPOTrainer whose advantages are (batch, tokens), built by `credit.combine_advantages`."""

    def __init__(self, *args, relate_rewards: Sequence[Reward], credit_assignment: bool, **kwargs):
        if "reward_funcs" in kwargs:
            raise ValueError("RelateGRPOTrainer: pass relate_rewards, not reward_funcs")
        self.relate_rewards = list(relate_rewards)
        self.credit_assignment = credit_assignment
        self._scored = None
        super().__init__(*args, reward_funcs=[r.score for r in self.relate_rewards], **kwargs)

    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        rewards_per_func = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        self._scored = (inputs, prompts, completions, completion_ids_list, rewards_per_func)
        return rewards_per_func

    def _generate_and_score_completions(self, inputs):
        output = super()._generate_and_score_completions(inputs)
        mode = "train" if self.model.training else "eval"
        group_size = self.num_generations if mode == "train" else self.num_generations_eval
        local_inputs, prompts, completions, ids_list, rewards = self._scored
        self._scored = None
        advantages = self.local_advantages(
            local_inputs, prompts, completions, ids_list, rewards, output["completion_ids"].shape[1], group_size, mode
        )
        output["advantages"] = advantages.to(output["completion_ids"].device)
        return output

    def local_advantages(self, local_inputs, prompts, completions, ids_list, rewards, length, group_size, mode):
        """This process's rows of the advantages: groups are normalised over every process's completions
        (a group split across ranks gets the same advantages as on one process), then sliced back."""
        advantages = self.relate_advantages(local_inputs, prompts, completions, ids_list, rewards, length, group_size,
                                            mode)
        start = self.accelerator.process_index * len(prompts)
        return advantages[start : start + len(prompts)]

    def relate_advantages(self, local_inputs, prompts, completions, ids_list, rewards, length, group_size, mode):
        """(all processes' batch, length) advantages; rewards are already gathered by TRL."""
        from accelerate.utils import gather_object

        if self.accelerator.num_processes > 1:  # group statistics need every process's completions
            prompts, completions, ids_list = gather_object(prompts), gather_object(completions), gather_object(ids_list)
            local_inputs = gather_object(local_inputs)
        rewards = rewards.detach().float().cpu()
        n = rewards.shape[0]
        completion_mask = torch.zeros(n, length)
        for i, ids in enumerate(ids_list):
            completion_mask[i, : min(len(ids), length)] = 1.0
        token_level = [r.granularity == TOKEN and self.credit_assignment for r in self.relate_rewards]
        token_masks = {}
        if any(token_level):
            offsets = credit.token_char_offsets(self._tokenizer, ids_list, length)
            kwargs = {k: [x[k] for x in local_inputs] for k in local_inputs[0] if k not in ("prompt", "completion")}
            kwargs["prompts"] = prompts
            for j, reward in enumerate(self.relate_rewards):
                if token_level[j]:
                    token_masks[j] = credit.spans_to_token_mask(reward.spans(completions, **kwargs), offsets)
        violating = None
        constraint_cols = [j for j, r in enumerate(self.relate_rewards) if r.constraint]
        if constraint_cols:
            violating = (rewards[:, constraint_cols] < 0).any(dim=1)
            self._metrics[mode]["relate/violation_rate"].append(violating.float().mean().item())
        rewards = torch.nan_to_num(rewards, nan=0.0)
        advantages = credit.combine_advantages(
            rewards,
            self.reward_weights.detach().float().cpu(),
            token_level,
            token_masks,
            completion_mask,
            group_size,
            violating=violating,
            credit_assignment=self.credit_assignment,
        )
        for j, mask in token_masks.items():
            share = (mask.sum() / completion_mask.sum().clamp(min=1)).item()
            self._metrics[mode][f"relate/token_share/{self.relate_rewards[j].name}"].append(share)
        return advantages


def reward_curves(log_history: list[dict], names: Sequence[str]) -> list[dict]:
    """Per-logged-step rows {step, <reward>: mean, reward, kl, loss} from the Trainer's log history."""
    rows = []
    for entry in log_history:
        if f"rewards/{names[0]}/mean" not in entry:
            continue
        row = {"step": int(entry.get("step", len(rows)))}
        for name in names:
            row[name] = float(entry[f"rewards/{name}/mean"])
        for key in ("reward", "kl", "loss", "relate/violation_rate", "completions/mean_length"):
            if key in entry:
                row[key.replace("relate/", "").replace("completions/", "")] = float(entry[key])
        rows.append(row)
    return rows
