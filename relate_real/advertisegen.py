"""AdvertiseGen (real Chinese clothing ad copy) as the policy's corpus: SFT, then GRPO.

Each line of the corpus is `{"content": "类型#裤*风格#简约*...", "summary": "<ad copy>"}`.
The adapter parses `content` into (attribute, value) pairs and builds the policy's own
prompt format, `policy.prompt_text(vertical, keyword)`:

    vertical = the 类型 value (上衣 / 裙 / 裤), keyword = the other attributes, `*`-joined
    prompt   = "裤 | 风格#简约*裤长#九分裤 |", completion = " " + ad copy + <eos>

The ad copy is the summary cut at its last sentence end (。！？) within `max_target_chars`
(a CPU-sized target: the full summaries average 112 characters). The structural reward's
keyword is the product type's head character (裤 / 裙 / 衣), which a fitting copy names.

`run()` (what `python -m evals.advertisegen_check` calls) trains the project's byte-level
BPE on the corpus, warm-starts the scratch policy with `policy.fit_sft`, then runs
`RelateGRPOTrainer` with the quality (structural + compliance, the zh lexicon) and
diversity rewards - no CTCVR reward: the corpus has no clicks - and measures compliance
rate, distinct-2 and self-BLEU (character level) on dev prompts before and after GRPO.
"""
from __future__ import annotations

import dataclasses
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import pandas as pd

from plumbing.logs import get_logger
from plumbing.config import require
from plumbing.runtime import limit_torch_threads

log = get_logger("real.advertisegen")
TYPE_KEY = "类型"
SENTENCE_END = "。！？!?"
KEYWORD_OF_TYPE = {"上衣": "衣"}  # the head character a copy uses (外衣, 毛衣, 衬衣...); others are their own


@dataclass
class AdvertiseGenConfig:
    """The `advertisegen:` section of configs/real_corpus.yaml."""

    train_json: str
    dev_json: str
    workdir: str
    train_rows: int
    dev_prompts: int
    generations_per_prompt: int
    max_target_chars: int
    tokenizer_vocab: int
    max_new_tokens: int
    temperature: float
    seed: int
    samples_in_report: int

    def __post_init__(self) -> None:
        p = "advertisegen"
        for name in ("train_json", "dev_json", "workdir"):
            require(bool(getattr(self, name).strip()), f"{p}.{name}", "must be a path")
        for name in ("train_rows", "dev_prompts", "max_new_tokens", "samples_in_report"):
            require(getattr(self, name) >= 1, f"{p}.{name}", f"must be >= 1, got {getattr(self, name)}")
        require(self.generations_per_prompt >= 2, f"{p}.generations_per_prompt",
                "must be >= 2 (diversity is measured within a prompt's texts)")
        require(self.max_target_chars >= 10, f"{p}.max_target_chars", "must be >= 10")
        require(self.tokenizer_vocab >= 300, f"{p}.tokenizer_vocab", "must be >= 300 (the byte alphabet is 256)")
        require(self.temperature > 0, f"{p}.temperature", "must be > 0")


# ------------------------------------------------------------------------------ the corpus


def parse_content(content: str) -> list[tuple[str, str]]:
    """"类型#裤*风格#简约" -> [("类型", "裤"), ("风格", "简约")]; ValueError on a malformed segment."""
    if not isinstance(content, str) or not content.strip():
        raise ValueError("content is empty")
    pairs = []
    for segment in content.strip().split("*"):
        key, sep, value = segment.partition("#")
        if not sep or not key.strip() or not value.strip():
            raise ValueError(f"content segment {segment!r} is not key#value")
        pairs.append((key.strip(), value.strip()))
    return pairs


def ad_copy(summary: str, max_chars: int) -> str:
    """The summary cut at its last sentence end within max_chars (hard cut when the first sentence is longer)."""
    summary = summary.strip()
    if len(summary) <= max_chars:
        return summary
    head = summary[:max_chars]
    ends = [head.rfind(c) for c in SENTENCE_END]
    cut = max(ends)
    return head[: cut + 1] if cut >= 0 else head


def prompt_fields(pairs: Sequence[tuple[str, str]]) -> dict[str, str]:
    """vertical (product type), keyword (the other attributes), reward keyword, prompt."""
    from relate_models.policy import prompt_text

    types = [v for k, v in pairs if k == TYPE_KEY]
    vertical = types[0] if types else "服装"
    rest = "*".join(f"{k}#{v}" for k, v in pairs if k != TYPE_KEY) or "无"
    return {
        "vertical": vertical,
        "attributes": rest,
        "keyword": KEYWORD_OF_TYPE.get(vertical, vertical),
        "prompt": prompt_text(vertical, rest),
    }


@dataclass
class Corpus:
    rows: pd.DataFrame  # content, summary, target, vertical, attributes, keyword, prompt
    rows_in: int
    quarantined: dict[str, int]


def read_corpus(lines: Sequence[str] | str | Path, max_target_chars: int) -> Corpus:
    """JSON lines -> rows; malformed lines quarantined and counted (rows_in = kept + quarantined)."""
    if isinstance(lines, (str, Path)):
        with open(lines, encoding="utf-8") as fh:
            lines = fh.read().splitlines()
    lines = [line for line in lines if line.strip()]
    reasons = {"malformed_json": 0, "missing_field": 0, "bad_content": 0}
    records = []
    for line in lines:
        try:
            obj = json.loads(line)
        except json.JSONDecodeError:
            reasons["malformed_json"] += 1
            continue
        if not isinstance(obj, dict) or not all(isinstance(obj.get(k), str) and obj[k].strip()
                                                for k in ("content", "summary")):
            reasons["missing_field"] += 1
            continue
        try:
            pairs = parse_content(obj["content"])
        except ValueError:
            reasons["bad_content"] += 1
            continue
        records.append({"content": obj["content"], "summary": obj["summary"].strip(),
                        "target": ad_copy(obj["summary"], max_target_chars), **prompt_fields(pairs)})
    rows = pd.DataFrame(records, columns=["content", "summary", "target", "vertical", "attributes", "keyword",
                                          "prompt"])
    return Corpus(rows=rows, rows_in=len(lines), quarantined=reasons)


def prompt_rows(rows: pd.DataFrame, sort: bool = True) -> list[dict]:
    """GRPO / evaluation rows (TRL passes the extra columns to the rewards): one per distinct
    prompt, sorted; with sort=False, one per row in row order (the dev rows)."""
    out = rows.drop_duplicates("prompt").sort_values("prompt") if sort else rows
    return [{"prompt_id": p, "prompt": p, "vertical": v, "keyword": k}
            for p, v, k in zip(out["prompt"], out["vertical"], out["keyword"])]


# ------------------------------------------------------------------------------ metrics


def char_tokens(text: str) -> list[str]:
    """Character-level tokens for Chinese (the diversity reward's word pattern: a CJK char is a word)."""
    from relate_models.rewards import words_with_offsets

    return [w for w, _, _ in words_with_offsets(text)]


def text_metrics(groups: Sequence[Sequence[str]], checker) -> dict[str, float]:
    """Compliance rate, distinct-2 and self-BLEU (character level), per prompt group then averaged."""
    from relate_models.text_metrics import ngrams, sentence_bleu

    texts = [t for g in groups for t in g]
    compliant = [not checker.find(t) for t in texts]
    distinct, bleu = [], []
    for group in groups:
        toks = [char_tokens(t) for t in group]
        grams = [g for t in toks for g in ngrams(t, 2)]
        if grams:
            distinct.append(len(set(grams)) / len(grams))
        toks = [t for t in toks if t]
        if len(toks) >= 2:
            bleu.append(sum(sentence_bleu(h, toks[:i] + toks[i + 1:]) for i, h in enumerate(toks)) / len(toks))
    all_grams = [g for t in texts for g in ngrams(char_tokens(t), 2)]
    mean = lambda xs: sum(xs) / len(xs) if xs else float("nan")  # noqa: E731
    return {
        "texts": len(texts),
        "compliance_rate": mean([float(c) for c in compliant]),
        "distinct_2": mean(distinct),
        "distinct_2_overall": len(set(all_grams)) / len(all_grams) if all_grams else float("nan"),
        "self_bleu": mean(bleu),
        "mean_chars": mean([len(t) for t in texts]),
    }


# ------------------------------------------------------------------------------ the run


def _sample(rows: pd.DataFrame, n: int, seed: int) -> pd.DataFrame:
    return rows if len(rows) <= n else rows.sample(n=n, random_state=seed).sort_index()


def run(cfg: AdvertiseGenConfig, policy_cfg, sft_cfg, grpo_cfg, lexicon: Path, train_path: Path,
        dev_path: Path) -> dict:
    """SFT then GRPO in the current directory (the work dir); returns the metrics, samples included."""
    from plumbing.paths import RELATE_DIR
    from relate_models import policy
    from relate_models.grpo_trainer import build_trainer, reward_context
    from relate_models.rewards import build_rewards, score_texts

    started = time.monotonic()
    limit_torch_threads(sft_cfg.torch_threads)
    train_corpus, dev_corpus, train, dev = _read_rows(cfg, train_path, dev_path)
    model, tokenizer, sft = _fit_sft(cfg, policy_cfg, sft_cfg, train)
    log.info("advertisegen: %d train rows (%d SFT train / %d val), %d dev prompts, %.1f tokens per example",
             len(train), sft["train_examples"], sft["val_examples"], len(dev), sft["tokens_per_example"])
    # the lexicon path is resolved by the caller: this runs in the work dir
    ctx = reward_context(dataclasses.replace(grpo_cfg, lexicon=str(lexicon)), None, train["target"],
                         eos_token_id=tokenizer.eos_token_id, latin_script=False)
    checker = ctx.compliance
    rewards = build_rewards(list(grpo_cfg.rewards), ctx)
    dev_rows = prompt_rows(dev, sort=False)

    def measure(m) -> tuple[dict, list[list[str]]]:
        texts = policy.generate(m, tokenizer, [r["prompt"] for r in dev_rows], n=cfg.generations_per_prompt,
                                max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, seed=cfg.seed)
        return {**text_metrics(texts, checker), "rewards": score_texts(rewards, dev_rows, texts)}, texts

    before, before_texts = measure(model)
    log.info("SFT policy on dev prompts: %s", _fmt(before))
    grpo_rows = prompt_rows(train)
    trainer = build_trainer(grpo_cfg, model, tokenizer, rewards, grpo_rows, max_completion_length=cfg.max_new_tokens)
    grpo_started = time.monotonic()
    trainer.train()
    grpo_seconds = time.monotonic() - grpo_started
    model = trainer.model.eval()
    after, after_texts = measure(model)
    log.info("GRPO policy on dev prompts: %s", _fmt(after))
    policy.save_policy(model, tokenizer, RELATE_DIR)
    sizes = {"train_rows_available": len(train_corpus.rows), "train_rows_used": len(train),
             "sft_train_examples": sft["train_examples"], "sft_val_examples": sft["val_examples"],
             "grpo_train_prompts": len(grpo_rows), "dev_prompts": len(dev_rows),
             "generations_per_prompt": cfg.generations_per_prompt, "max_target_chars": cfg.max_target_chars,
             "tokenizer_vocab": len(tokenizer), "tokens_per_example": round(sft["tokens_per_example"], 1),
             "policy_parameters": policy.n_parameters(model), "sft_epochs": sft_cfg.epochs,
             "grpo_steps": int(trainer.state.global_step),
             "grpo_batch": f"{grpo_cfg.prompts_per_step} prompts x {grpo_cfg.num_generations} generations"}
    return {
        "sizes": sizes,
        "quarantined": {"train": train_corpus.quarantined, "dev": dev_corpus.quarantined,
                        "train_rows_in": train_corpus.rows_in, "dev_rows_in": dev_corpus.rows_in},
        "rewards": dict(grpo_cfg.rewards), "sft": sft["summary"], "before_grpo": before, "after_grpo": after,
        "reference_copy": _reference_metrics(dev, train_corpus, dev_corpus, checker),
        "samples": [{"prompt": dev_rows[i]["prompt"], "reference": dev["target"][i],
                     "sft": before_texts[i][0], "grpo": after_texts[i][0]}
                    for i in range(min(cfg.samples_in_report, len(dev_rows)))],
        "seconds": {"sft": sft["summary"]["seconds"], "grpo": round(grpo_seconds, 1),
                    "total": round(time.monotonic() - started, 1)},
    }


def _read_rows(cfg: AdvertiseGenConfig, train_path: Path, dev_path: Path) -> tuple:
    """(train corpus, dev corpus, sampled train rows, sampled dev rows)."""
    train_corpus, dev_corpus = read_corpus(train_path, cfg.max_target_chars), read_corpus(dev_path, cfg.max_target_chars)
    if train_corpus.rows.empty or dev_corpus.rows.empty:
        raise ValueError(f"advertisegen: no usable rows (train quarantined {train_corpus.quarantined}, "
                         f"dev quarantined {dev_corpus.quarantined})")
    train = _sample(train_corpus.rows, cfg.train_rows, cfg.seed).reset_index(drop=True)
    dev = _sample(dev_corpus.rows, cfg.dev_prompts, cfg.seed).reset_index(drop=True)
    return train_corpus, dev_corpus, train, dev


def _fit_sft(cfg: AdvertiseGenConfig, policy_cfg, sft_cfg, train: pd.DataFrame) -> tuple:
    """Tokenizer, scratch policy and SFT on the training rows, saved to models/ and reloaded as the
    grpo stage loads it (TRL builds the KL reference model from the policy's path).

    Returns (model, tokenizer, {train_examples, val_examples, tokens_per_example, summary})."""
    from plumbing.paths import SFT_DIR, TOKENIZER_DIR
    from relate_models import policy
    from relate_models.tokenizer import save_tokenizer, train_tokenizer

    tokenizer = train_tokenizer(list(train["prompt"]) + [policy.completion_text(t) for t in train["target"]],
                                vocab_size=cfg.tokenizer_vocab)
    save_tokenizer(tokenizer, TOKENIZER_DIR)
    examples = [policy.encode_example(tokenizer, p, t, sft_cfg.max_tokens) for p, t in zip(train["prompt"], train["target"])]
    is_val = [policy.stable_fraction("advertisegen", p, t) < sft_cfg.val_fraction
              for p, t in zip(train["prompt"], train["target"])]
    sft_train = [e for e, v in zip(examples, is_val) if not v]
    sft_val = [e for e, v in zip(examples, is_val) if v]
    if not sft_train or not sft_val:
        raise ValueError(f"advertisegen: need SFT train and val examples, got {len(sft_train)} / {len(sft_val)}")
    model = policy.build_policy(policy_cfg, tokenizer)
    initial_val = policy.mean_loss(model, sft_val, tokenizer.pad_token_id, sft_cfg.batch_size * 2)
    sft_started = time.monotonic()
    curve = policy.fit_sft(model, tokenizer, sft_train, sft_val, epochs=sft_cfg.epochs, batch_size=sft_cfg.batch_size,
                           lr=sft_cfg.learning_rate, weight_decay=sft_cfg.weight_decay,
                           warmup_steps=sft_cfg.warmup_steps, seed=sft_cfg.seed, log=log.info,
                           log_every=sft_cfg.log_every)
    sft_seconds = time.monotonic() - sft_started
    policy.save_policy(model, tokenizer, SFT_DIR)
    model, tokenizer = policy.load_policy(SFT_DIR)
    best = min(curve, key=lambda r: r["val_loss"])
    return model, tokenizer, {
        "train_examples": len(sft_train), "val_examples": len(sft_val),
        "tokens_per_example": sum(len(ids) for ids, _ in examples) / len(examples),
        "summary": {"initial_val_loss": initial_val, "val_loss": best["val_loss"], "best_epoch": best["epoch"],
                    "seconds": round(sft_seconds, 1)},
    }


def _reference_metrics(dev: pd.DataFrame, train_corpus: Corpus, dev_corpus: Corpus, checker) -> dict:
    """The human-written copy of the same dev rows, cut the same way: what the metrics look like on real ads."""
    reference = text_metrics([[t] for t in dev["target"]], checker)
    reference["compliance_rate_full_summaries_dev"] = text_metrics([[t] for t in dev_corpus.rows["summary"]],
                                                                   checker)["compliance_rate"]
    reference["compliance_rate_full_summaries_train"] = text_metrics([[t] for t in train_corpus.rows["summary"]],
                                                                     checker)["compliance_rate"]
    return reference


def _fmt(m: dict) -> str:
    return ", ".join(f"{k} {v:.4g}" for k, v in m.items() if isinstance(v, float) and not math.isnan(v))


def report_markdown(m: dict) -> str:
    """reports/real_advertisegen.md: sizes, before/after table, samples."""
    rows = [("compliance rate", "compliance_rate"), ("distinct-2 (char, per prompt)", "distinct_2"),
            ("distinct-2 (char, all texts)", "distinct_2_overall"), ("self-BLEU (char, per prompt)", "self_bleu"),
            ("mean characters", "mean_chars")]
    lines = [
        "# Real-corpus run: AdvertiseGen (Chinese ad copy), SFT then GRPO",
        "",
        "Generated by `python -m evals.advertisegen_check` (config `configs/real_corpus.yaml`).",
        "Rewards: " + ", ".join(f"{k} x{v:g}" for k, v in m["rewards"].items())
        + " (no CTCVR reward: the corpus has no clicks). Compliance lexicon: China's Advertising Law, "
          "Article 9 absolute terms (`relate_models/data/compliance_lexicon_zh.yaml`).",
        "",
        "Sizes: " + ", ".join(f"{k} {v}" for k, v in m["sizes"].items()),
        "",
        f"SFT: val loss {m['sft']['initial_val_loss']:.3f} -> {m['sft']['val_loss']:.3f}. "
        f"Seconds: {m['seconds']}.",
        "",
        "| metric (dev prompts) | SFT | after GRPO | human copy (same rows) |",
        "|---|---|---|---|",
    ]
    for label, key in rows:
        lines.append(f"| {label} | {m['before_grpo'][key]:.4f} | {m['after_grpo'][key]:.4f} | "
                     f"{m['reference_copy'][key]:.4f} |")
    for name in m["before_grpo"]["rewards"]:
        lines.append(f"| reward {name} | {m['before_grpo']['rewards'][name]:.4f} | "
                     f"{m['after_grpo']['rewards'][name]:.4f} | |")
    lines += ["", "Human copy: distinct-2 / self-BLEU are over single texts (one per prompt), so they are not "
              "comparable to the per-prompt groups of generated texts.", "", "## Samples (first generation per prompt)", ""]
    for s in m["samples"]:
        lines += [f"- prompt: `{s['prompt']}`", f"  - human: {s['reference']}", f"  - SFT: {s['sft']}",
                  f"  - GRPO: {s['grpo']}"]
    return "\n".join(lines) + "\n"
