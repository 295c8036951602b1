"""Run under `accelerate launch --num_processes N --cpu`: each rank scores its slice of one fixed
GRPO batch with RelateGRPOTrainer.local_advantages; rank 0 writes every rank's rows to argv[2].

argv: <tokenizer dir> <output json> <group size>. The batch, its rewards and its spans are fixed,
so 1 process and N processes must agree (tests/test_grpo.py checks)."""
from __future__ import annotations

import collections
import json
import sys

import torch
from accelerate import Accelerator
from accelerate.utils import gather_object

from relate_models.grpo_trainer import RelateGRPOTrainer
from relate_models.rewards import Reward
from relate_models.tokenizer import load_tokenizer

TEXTS = [" Get cheap flights guaranteed results", " Get cheap flights in minutes", " Compare city breaks now",
         " Shop city breaks guaranteed results today", " Find rain jackets", " Find rain jackets and save big",
         " Discover vitamin d deals", " Get vitamin d guaranteed results"]
REWARDS = torch.tensor([[0.3, -5.0], [0.1, 0.0], [0.7, 0.0], [0.2, -5.0], [0.4, 0.0], [0.9, 0.0], [0.5, 0.0],
                        [0.6, -5.0]])


def spans(completions, **kwargs):
    return [[(c.find("guaranteed results"), c.find("guaranteed results") + 18)] if "guaranteed" in c else []
            for c in completions]


def trainer(tokenizer, accelerator) -> RelateGRPOTrainer:
    fake = RelateGRPOTrainer.__new__(RelateGRPOTrainer)  # the advantage logic only, no model
    fake.relate_rewards = [Reward("seq", "sequence", lambda c, **k: [0.0] * len(c)),
                           Reward("comp", "token", lambda c, **k: [0.0] * len(c), spans, constraint=True)]
    fake.credit_assignment, fake._tokenizer, fake.accelerator = True, tokenizer, accelerator
    fake.reward_weights = torch.tensor([1.0, 0.5])
    fake._metrics = {"train": collections.defaultdict(list)}
    return fake


def rows_of(tokenizer, accelerator, group_size: int) -> list[list[float]]:
    """This rank's advantage rows (each trimmed to its completion's tokens)."""
    n = len(TEXTS) // accelerator.num_processes
    start = accelerator.process_index * n
    texts = TEXTS[start : start + n]
    ids = [tokenizer(t, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id] for t in texts]
    inputs = [{"prompt": f"p{(start + i) // group_size}", "prompt_id": f"p{(start + i) // group_size}"}
              for i in range(n)]
    width = max(map(len, ids)) + 1  # the local padded width, as TRL pads per process
    adv = trainer(tokenizer, accelerator).local_advantages(inputs, [x["prompt"] for x in inputs], texts, ids, REWARDS,
                                                          width, group_size, "train")
    assert adv.shape == (n, width) and adv[:, -1].abs().sum() == 0  # padding gets nothing
    return [adv[i, : len(x)].tolist() for i, x in enumerate(ids)]


def main(argv: list[str]) -> None:
    accelerator = Accelerator(cpu=True)
    tokenizer = load_tokenizer(argv[0])
    rows = gather_object(rows_of(tokenizer, accelerator, int(argv[2])))
    if accelerator.is_main_process:
        with open(argv[1], "w") as f:
            json.dump({"num_processes": accelerator.num_processes, "rows": rows}, f)


if __name__ == "__main__":
    main(sys.argv[1:])
