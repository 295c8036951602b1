"""The shared tokenizer: a byte-level BPE trained on the logged ad texts.

Byte-level so that decode(encode(text)) == text for any text the policy LM writes (no
lossy normalisation, no UNK in practice), and offsets map compliance spans to tokens.
Saved as a PreTrainedTokenizerFast, so `AutoTokenizer.from_pretrained(dir)` loads it
offline for the CTCVR model and the policy LM alike.
"""
from __future__ import annotations

import os
from typing import Iterable

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

PAD, BOS, EOS, UNK = "<pad>", "<bos>", "<eos>", "<unk>"
SPECIAL_TOKENS = [PAD, BOS, EOS, UNK]  # ids 0..3 in this order


def train_tokenizer(texts: Iterable[str], vocab_size: int = 4000, min_frequency: int = 2) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE on `texts`; deterministic for the same texts in the same order."""
    texts = [t for t in texts if isinstance(t, str) and t]
    if not texts:
        raise ValueError("tokenizer: no ad texts to train on")
    bpe = Tokenizer(models.BPE(unk_token=UNK))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    # trim_offsets: a token's offsets cover its characters, not the leading space it carries
    bpe.post_processor = processors.ByteLevel(trim_offsets=True)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(sorted(set(texts)), trainer=trainer)
    return wrap(bpe)


def wrap(bpe: Tokenizer) -> PreTrainedTokenizerFast:
    return PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        pad_token=PAD,
        bos_token=BOS,
        eos_token=EOS,
        unk_token=UNK,
        padding_side="right",
        clean_up_tokenization_spaces=False,
    )


def save_tokenizer(tokenizer: PreTrainedTokenizerFast, directory: str | os.PathLike) -> None:
    tokenizer.save_pretrained(str(directory))


def load_tokenizer(directory: str | os.PathLike) -> PreTrainedTokenizerFast:
    """Load offline; a missing directory is a clear FileNotFoundError."""
    if not os.path.isfile(os.path.join(directory, "tokenizer.json")):
        raise FileNotFoundError(f"no tokenizer at {directory} (tokenizer.json missing); run train_ctcvr first")
    return PreTrainedTokenizerFast.from_pretrained(str(directory), local_files_only=True)
