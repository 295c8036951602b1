"""The policy LM that writes ad texts: factory, prompt format, corpus, save/load, generation.

`policy.base_model` is any Hugging Face causal LM path; `scratch` (the default) builds a
small Llama-style model on the shared tokenizer, so everything runs offline on a CPU. A
pretrained base model brings its own tokenizer (`policy_tokenizer`); the artifact saves it.
A prompt is `"<vertical> | <keyword> |"`; the completion is `" " + ad text + <eos>`. With
`policy.prompt_format: chat` the prompt goes through the tokenizer's chat template as a user
turn and the completion is the ad text + <eos>. `relate_policy.json` in a saved policy records
its prompt format and base model (an adapter artifact's base, see relate_models/lora.py).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import pandas as pd
import torch

from plumbing.config import require, require_range
from plumbing.errors import ConfigError, MissingArtifact

SCRATCH = "scratch"
PLAIN, CHAT = "plain", "chat"
META_FILE = "relate_policy.json"


@dataclass
class PolicyConfig:
    """The `policy:` params section."""

    base_model: str  # "scratch" or a Hugging Face causal LM path
    hidden_size: int
    num_layers: int
    num_heads: int
    intermediate_size: int
    max_positions: int  # prompt + completion tokens
    seed: int
    prompt_format: str  # "plain" or "chat" (the tokenizer's chat template)
    lora: dict  # {enabled, r, alpha, dropout, target_modules}: relate_models/lora.py

    def __post_init__(self) -> None:
        from relate_models.lora import validate_lora

        p = "policy"
        require(bool(self.base_model.strip()), f"{p}.base_model", "must be 'scratch' or a model path")
        require(self.prompt_format in (PLAIN, CHAT), f"{p}.prompt_format", f"must be plain or chat, got {self.prompt_format!r}")
        self.lora = validate_lora(self.lora, f"{p}.lora")
        require_range(self, p, {"hidden_size": (1, 16384), "num_layers": (1, 256), "num_heads": (1, 256),
                                "intermediate_size": (1, 65536), "max_positions": (1, 32768)})
        require(self.hidden_size % self.num_heads == 0, f"{p}.hidden_size", "must be divisible by policy.num_heads")
        require(self.max_positions >= 16, f"{p}.max_positions", f"must be >= 16, got {self.max_positions}")


def prompt_text(vertical: str, keyword: str) -> str:
    return f"{vertical} | {keyword} |"


def completion_text(ad_text: str, prompt_format: str = PLAIN) -> str:
    """What the policy writes after the prompt (plain: a leading space, as byte-level BPE words carry)."""
    return ad_text.strip() if prompt_format == CHAT else " " + ad_text.strip()


def format_prompt(tokenizer, prompt: str, prompt_format: str) -> str:
    """The prompt as the policy reads it: as is (plain), or a user turn through the chat template."""
    if prompt_format == PLAIN:
        return prompt
    check_chat_template(tokenizer)
    return tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                         add_generation_prompt=True)


def check_chat_template(tokenizer) -> None:
    if not getattr(tokenizer, "chat_template", None):
        name = getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__
        raise ConfigError(f"policy.prompt_format: chat, but the tokenizer of {name!r} has no chat template; "
                          "use prompt_format: plain")


def policy_tokenizer(cfg: PolicyConfig, project_tokenizer_dir: str | os.PathLike):
    """The project tokenizer for `scratch`; otherwise the base model's own tokenizer (checked)."""
    if cfg.base_model == SCRATCH:
        from relate_models.tokenizer import load_tokenizer

        tokenizer = load_tokenizer(project_tokenizer_dir)
    else:
        from transformers import AutoTokenizer

        try:
            tokenizer = AutoTokenizer.from_pretrained(cfg.base_model)
        except OSError as err:
            raise ConfigError(f"policy.base_model: no tokenizer for {cfg.base_model!r} ({err})") from None
        check_policy_tokenizer(tokenizer, cfg.base_model)
    if cfg.prompt_format == CHAT:
        check_chat_template(tokenizer)
    return tokenizer


def check_policy_tokenizer(tokenizer, name: str) -> None:
    """A policy tokenizer needs an <eos> and character offsets (token-level credit); no pad: pad = eos."""
    if not getattr(tokenizer, "is_fast", False):
        raise ConfigError(f"policy.base_model: the tokenizer of {name!r} is a slow tokenizer without offset mapping; "
                          "token-level credit needs a fast tokenizer (tokenizer.json)")
    if tokenizer.eos_token_id is None:
        raise ConfigError(f"policy.base_model: the tokenizer of {name!r} has no eos token")
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token


def policy_meta(cfg: PolicyConfig) -> dict:
    """What a saved policy records besides its weights: prompt format, base model, adapter or not."""
    return {"prompt_format": cfg.prompt_format, "base_model": cfg.base_model, "adapter": cfg.lora["enabled"]}


def read_meta(directory: str | os.PathLike) -> dict:
    """A saved policy's relate_policy.json (a policy saved before it existed: plain prompts, full weights)."""
    import json

    path = Path(directory) / META_FILE
    meta = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    return {"prompt_format": PLAIN, "base_model": SCRATCH, "adapter": False, **meta}


def meta_changes(old: dict, new: dict) -> list[str]:
    """`old -> new` for each field of two policies' metas (relate_policy.json) that makes them different
    models: a warm start cannot continue one as the other."""
    return [f"{k} {old[k]!r} -> {new[k]!r}" for k in ("base_model", "prompt_format") if old[k] != new[k]]


def build_policy(cfg: PolicyConfig, tokenizer):
    """A fresh scratch model, or `base_model` loaded with AutoModelForCausalLM; with a LoRA adapter
    when policy.lora.enabled."""
    model = _base_policy(cfg, tokenizer)
    if cfg.lora["enabled"]:
        from relate_models.lora import wrap

        model = wrap(model, cfg.lora)
    return model


def _base_policy(cfg: PolicyConfig, tokenizer):
    from transformers import AutoModelForCausalLM

    if cfg.base_model != SCRATCH:
        model = AutoModelForCausalLM.from_pretrained(cfg.base_model)
        if model.get_input_embeddings().weight.shape[0] < len(tokenizer):
            model.resize_token_embeddings(len(tokenizer))
        for name in ("eos_token_id", "pad_token_id"):
            if getattr(model.generation_config, name, None) is None:
                setattr(model.generation_config, name, getattr(tokenizer, name))
        return model
    return _scratch_policy(cfg, tokenizer)


def _scratch_policy(cfg: PolicyConfig, tokenizer):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(cfg.seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_heads,
        max_position_embeddings=cfg.max_positions,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = LlamaForCausalLM(config)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    return model


def n_parameters(model) -> int:
    return sum(p.numel() for p in model.parameters())


def save_policy(model, tokenizer, directory: str | os.PathLike, meta: dict | None = None,
                extra: Callable[[Path], None] | None = None) -> None:
    """save_pretrained (safetensors; an adapter model: only its adapter) + tokenizer (+ `meta` as
    relate_policy.json) into `directory`, atomically as a whole; NaN weights never replace a saved policy.

    `extra(staging)` writes more files into the staging directory before it replaces `directory`
    (a stage's lineage.json), so they are published with the weights or not at all."""
    import json

    from plumbing.atomic import directory as atomic_directory, require_finite_weights
    from relate_models import lora

    with atomic_directory(directory) as staging:
        if lora.is_adapter(model):
            lora.save_adapter(model, staging)
        else:
            model.save_pretrained(str(staging), safe_serialization=True)
        require_finite_weights(str(directory), staging)
        tokenizer.save_pretrained(str(staging))
        if meta is not None:
            (staging / META_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        if extra is not None:
            extra(staging)


def load_policy(directory: str | os.PathLike, trainable: bool = False):
    """(model, tokenizer) from a saved policy directory (an adapter artifact: its base + the adapter,
    `trainable` keeps the adapter trainable); a clear error when it is missing."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from relate_models import lora

    directory = Path(directory)
    if lora.is_adapter_dir(directory):
        model = lora.load_adapter_policy(directory, read_meta(directory)["base_model"], trainable)
    elif (directory / "config.json").is_file():
        model = AutoModelForCausalLM.from_pretrained(str(directory), local_files_only=True)
    else:
        raise MissingArtifact(f"no policy at {directory} (config.json missing)")
    tokenizer = AutoTokenizer.from_pretrained(str(directory), local_files_only=True)
    return model.eval(), tokenizer


def ship_merged(policy_dir: str | os.PathLike, out_dir: str | os.PathLike) -> bool:
    """For an adapter policy: a plain full-weight copy with the adapter merged in (relate_policy.json
    says `merged_from`), loadable without PEFT or the base checkpoint. False for a full-weight policy."""
    import json

    from relate_models import lora

    policy_dir = Path(policy_dir)
    if not lora.is_adapter_dir(policy_dir):
        return False
    model, tokenizer = load_policy(policy_dir)
    adapter_config = json.loads((policy_dir / lora.ADAPTER_CONFIG).read_text(encoding="utf-8"))
    meta = {**read_meta(policy_dir), "adapter": False, "merged_from": adapter_config.get("base_model_name_or_path")}
    save_policy(lora.merged(model), tokenizer, out_dir, meta=meta)
    return True


@torch.no_grad()
def generate(
    model,
    tokenizer,
    prompts: Sequence[str],
    n: int = 1,
    max_new_tokens: int = 24,
    temperature: float = 1.0,
    top_p: float = 1.0,
    seed: int = 0,
    batch_size: int = 256,
) -> list[list[str]]:
    """N sampled ad texts per prompt (stripped), deterministic given the seed.

    temperature 0 means greedy decoding (then all N texts of a prompt are the same).
    """
    model.eval()
    torch.manual_seed(seed)
    flat = [p for p in prompts for _ in range(n)]
    texts: list[str] = []
    for s in range(0, len(flat), batch_size):
        chunk = flat[s : s + batch_size]
        ids = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in chunk]
        width = max(len(x) for x in ids)
        input_ids = torch.full((len(ids), width), tokenizer.pad_token_id, dtype=torch.long)
        attention = torch.zeros_like(input_ids)
        for i, x in enumerate(ids):  # left padding, so every row continues from its last prompt token
            input_ids[i, width - len(x) :] = torch.tensor(x)
            attention[i, width - len(x) :] = 1
        sampling = {"do_sample": True, "temperature": temperature, "top_p": top_p} if temperature > 0 else {"do_sample": False}
        out = model.generate(
            input_ids=input_ids.to(model.device),
            attention_mask=attention.to(model.device),
            max_new_tokens=max_new_tokens,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            **sampling,
        )
        texts.extend(t.strip() for t in tokenizer.batch_decode(out[:, width:], skip_special_tokens=True))
    return [texts[i * n : (i + 1) * n] for i in range(len(prompts))]


def generate_texts(policy_dir, prompt_rows: Sequence[dict], n: int, **kwargs) -> list[list[str]]:
    """For evaluators: N texts per {vertical, keyword} row from a saved policy (see `generate` for kwargs)."""
    model, tokenizer = load_policy(policy_dir)
    prompts = policy_prompts(policy_dir, tokenizer, prompt_rows)
    return generate(model, tokenizer, prompts, n=n, **kwargs)


def policy_prompts(policy_dir, tokenizer, prompt_rows: Sequence[dict]) -> list[str]:
    """The prompts of {vertical, keyword} rows as the saved policy reads them (its prompt format)."""
    prompt_format = read_meta(policy_dir)["prompt_format"]
    return [format_prompt(tokenizer, prompt_text(r["vertical"], r["keyword"]), prompt_format) for r in prompt_rows]


def load_search_corpus(text_stats_dir: str | os.PathLike, days: Sequence[str] | None = None) -> pd.DataFrame:
    """Historical search ads from curated `text_stats`: one row per (vertical, keyword, ad_text).

    Columns: vertical, keyword, ad_text, impressions, clicks, conversions (summed over days and ads).
    `days`: only those `dt=` partitions (a warm start's new days; an empty frame for none); None: all.
    """
    text_stats_dir = Path(text_stats_dir)
    if not text_stats_dir.is_dir() or not any(p.name.startswith("dt=") for p in text_stats_dir.iterdir()):
        raise MissingArtifact(f"no text_stats partitions under {text_stats_dir}; run ingest first")
    cols = ["vertical", "keyword", "ad_text", "impressions", "clicks", "conversions"]
    if days is None:
        frame = pd.read_parquet(text_stats_dir, columns=cols)
    else:  # each day's directory on its own: a hive-partitioned read would need the dt column's type
        parts = [pd.read_parquet(text_stats_dir / f"dt={d}", columns=cols) for d in days]
        frame = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=cols)
    frame = frame.dropna(subset=["vertical", "keyword", "ad_text"])
    for col in ("vertical", "keyword", "ad_text"):
        frame[col] = frame[col].astype(str)
    frame = frame[frame["ad_text"].str.strip() != ""]
    grouped = frame.groupby(["vertical", "keyword", "ad_text"], as_index=False, sort=True)[
        ["impressions", "clicks", "conversions"]
    ].sum()
    return grouped.reset_index(drop=True)


# ---------------------------------------------------------------------------------- SFT
def stable_fraction(*parts: str) -> float:
    """A deterministic number in [0, 1) per key (splits that survive reruns and row order)."""
    import zlib

    return zlib.crc32("\x1f".join(parts).encode("utf-8")) / 2**32


def encode_example(tokenizer, prompt: str, ad_text: str, max_tokens: int,
                   prompt_format: str = PLAIN) -> tuple[list[int], list[int]]:
    """(input_ids, labels): the prompt is context only (label -100); the ad text and <eos> are learned.

    `prompt` is already formatted (format_prompt); `prompt_format` shapes the completion."""
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    target = tokenizer(completion_text(ad_text, prompt_format), add_special_tokens=False)["input_ids"]
    target = target + [tokenizer.eos_token_id]
    ids = (prompt_ids + target)[:max_tokens]
    labels = ([-100] * len(prompt_ids) + target)[:max_tokens]
    return ids, labels


def collate(examples: Sequence[tuple[list[int], list[int]]], pad_id: int) -> dict[str, torch.Tensor]:
    width = max(len(ids) for ids, _ in examples)
    input_ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), -100, dtype=torch.long)
    attention = torch.zeros((len(examples), width), dtype=torch.long)
    for i, (ids, lab) in enumerate(examples):
        input_ids[i, : len(ids)] = torch.tensor(ids)
        labels[i, : len(lab)] = torch.tensor(lab)
        attention[i, : len(ids)] = 1
    return {"input_ids": input_ids, "labels": labels, "attention_mask": attention}


def _device_batch(model, examples, pad_id: int) -> tuple[dict[str, torch.Tensor], int]:
    """(the collated examples on the model's device, the number of target tokens the loss averages over)."""
    batch = {k: v.to(model.device) for k, v in collate(examples, pad_id).items()}
    return batch, int((batch["labels"][:, 1:] != -100).sum())


@torch.no_grad()
def mean_loss(model, examples, pad_id: int, batch_size: int) -> float:
    """Token-weighted mean cross-entropy over examples."""
    model.eval()
    total, count = 0.0, 0
    for s in range(0, len(examples), batch_size):
        batch, n_tokens = _device_batch(model, examples[s : s + batch_size], pad_id)
        total += float(model(**batch).loss) * n_tokens
        count += n_tokens
    return total / max(count, 1)


def join_process_group() -> tuple[int, int]:
    """(rank, world size) under `torchrun` / `accelerate launch` (joining the launch's process group:
    gloo for CPU tensors, NCCL for CUDA ones, each rank on its LOCAL_RANK GPU); (0, 1) in one process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return 0, 1
    dist = torch.distributed
    if not dist.is_initialized():
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group("cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo")
    return dist.get_rank(), dist.get_world_size()


def _sum_over_ranks(model, world: int) -> None:
    """Sum every gradient over the ranks (one flat all-reduce), zeros for a rank whose share was empty."""
    if world == 1:
        return
    params = [p for p in model.parameters() if p.requires_grad]
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads])
    torch.distributed.all_reduce(flat)
    for p, chunk in zip(params, torch.split(flat, [g.numel() for g in grads])):
        p.grad = chunk.view_as(p).clone()


def _batch_loss(model, examples, pad_id: int, world: int) -> tuple[torch.Tensor | None, float]:
    """(this rank's share of the global batch's token-mean loss, to backpropagate; the global mean).

    One process: the model's own mean. N processes: this rank's token sum over the tokens of every
    rank, so the summed gradients are the whole batch's, as one process computes them."""
    if world == 1:
        loss = model(**_device_batch(model, examples, pad_id)[0]).loss
        return loss, loss.item()
    tokens, summed = torch.zeros(2, dtype=torch.float64), None
    if examples:
        batch, tokens[0] = _device_batch(model, examples, pad_id)
        summed = model(**batch).loss * tokens[0].item()
        tokens[1] = summed.item()
    torch.distributed.all_reduce(tokens)
    total = max(tokens[0].item(), 1.0)
    return (summed / total if summed is not None else None), tokens[1].item() / total


def warmup_cosine(warmup_steps: int, total_steps: int) -> Callable[[int], float]:
    """The learning-rate factor by step: linear warm-up, then cosine decay to 0.1."""
    import math

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))

    return factor


def fit_sft(model, tokenizer, train, val, *, epochs, batch_size, lr, weight_decay, warmup_steps, seed, log, log_every=50):
    """AdamW with linear warmup and cosine decay; keeps the epoch with the best validation loss.

    `batch_size` is the global batch: under N processes (join_process_group) each rank takes every
    N-th example of it and the gradients are summed, so N processes train the model one does.
    Returns the per-epoch curve [{epoch, step, train_loss, val_loss, seconds}].
    """
    import math
    import time

    rank, world = join_process_group()
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    steps_per_epoch = math.ceil(len(train) / batch_size)
    total_steps = max(1, epochs * steps_per_epoch)

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(warmup_steps, total_steps))
    curve, best, best_state, step = [], math.inf, None, 0
    start_all = time.monotonic()
    for epoch in range(1, epochs + 1):
        start = time.monotonic()
        model.train()
        order = torch.randperm(len(train), generator=generator).tolist()
        running, seen = 0.0, 0
        for s in range(0, len(order), batch_size):
            share = [train[i] for i in order[s : s + batch_size][rank::world]]
            optimizer.zero_grad(set_to_none=True)
            loss, batch_mean = _batch_loss(model, share, tokenizer.pad_token_id, world)
            if loss is not None:
                loss.backward()
            _sum_over_ranks(model, world)
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            step += 1
            running += batch_mean
            seen += 1
            if step % log_every == 0:
                rate = step / max(time.monotonic() - start_all, 1e-9)
                log(f"sft step {step}/{total_steps}: train loss {running / seen:.4f} ({rate:.1f} steps/s)")
        val_loss = mean_loss(model, val, tokenizer.pad_token_id, batch_size * 2) if val else float("nan")
        row = {
            "epoch": epoch,
            "step": step,
            "train_loss": running / max(seen, 1),
            "val_loss": val_loss,
            "seconds": round(time.monotonic() - start, 2),
        }
        curve.append(row)
        log(f"sft epoch {epoch}/{epochs}: train loss {row['train_loss']:.4f}, val loss {val_loss:.4f}, {row['seconds']}s")
        if not val or val_loss < best:
            best = val_loss
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    return curve


def write_curves(rows: list[dict], csv_path, png_path, x: str, ys: Sequence[str], title: str) -> None:
    """Training curves as CSV (for `dvc plots`) and a PNG with one panel per series, written atomically."""

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from plumbing.atomic import save_figure, write_text

    frame = pd.DataFrame(rows)
    write_text(csv_path, frame.to_csv(index=False))
    ys = [y for y in ys if y in frame.columns]
    ncols = min(max(len(ys), 1), 3)
    nrows = -(-max(len(ys), 1) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.6 * ncols, 2.6 * nrows), squeeze=False)
    for ax in axes.flat[len(ys):]:
        ax.axis("off")
    for ax, y in zip(axes.flat, ys):
        ax.plot(frame[x], frame[y], marker="." if len(frame) < 30 else None)
        ax.set_title(y, fontsize=9)
        ax.set_xlabel(x, fontsize=8)
        ax.tick_params(labelsize=7)
    fig.suptitle(title, fontsize=10)
    save_figure(fig, png_path)


# ------------------------------------------------------------------------------ prompts
def modal_user_segments(labeled_impressions_dir) -> dict[tuple[str, str], str]:
    """(vertical, keyword) -> the user segment most often logged on its search impressions."""
    import pyarrow.dataset as ds

    path = Path(labeled_impressions_dir)
    if not path.is_dir():
        raise MissingArtifact(f"no labeled_impressions under {path}; run ingest first")
    table = ds.dataset(str(path), format="parquet", partitioning="hive").to_table(
        columns=["placement", "vertical", "keyword", "user_segment"], filter=ds.field("placement") == "search"
    )
    frame = table.drop(["placement"]).to_pandas().dropna()
    if frame.empty:
        return {}
    counts = frame.groupby(["vertical", "keyword", "user_segment"], observed=True).size().reset_index(name="n")
    counts = counts.sort_values(["vertical", "keyword", "n", "user_segment"], ascending=[True, True, False, True])
    top = counts.drop_duplicates(["vertical", "keyword"])
    return {(str(v), str(k)): str(s) for v, k, s in zip(top["vertical"], top["keyword"], top["user_segment"])}


def split_prompts(corpus: pd.DataFrame, eval_fraction: float, segments: dict | None = None,
                  default_segment: str | None = None) -> tuple[list[dict], list[dict]]:
    """One prompt per (vertical, keyword), split deterministically into (train, eval) rows.

    Rows: prompt_id, prompt, vertical, keyword, user_segment (the CTCVR reward's context).
    """
    pairs = corpus[["vertical", "keyword"]].drop_duplicates().sort_values(["vertical", "keyword"])
    train, held_out = [], []
    for vertical, keyword in pairs.itertuples(index=False):
        segment = (segments or {}).get((vertical, keyword), default_segment)
        row = {
            "prompt_id": f"{vertical}|{keyword}",
            "prompt": prompt_text(vertical, keyword),
            "vertical": vertical,
            "keyword": keyword,
            "user_segment": segment,
        }
        (held_out if stable_fraction("prompt", vertical, keyword) < eval_fraction else train).append(row)
    return train, held_out
