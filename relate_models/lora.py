"""LoRA (PEFT) adapters for the policy: the `policy.lora` knobs, wrapping, and adapter artifacts.

An adapter artifact is PEFT's `save_pretrained` output (adapter_config.json +
adapter_model.safetensors) plus the policy's tokenizer and `relate_policy.json`, whose
`base_model` names the model the adapter sits on. Loading one loads that base, then the
adapter (`load_adapter_policy`).
"""
from __future__ import annotations

import os
from pathlib import Path

from plumbing.config import require
from plumbing.errors import ConfigError, MissingArtifact

ADAPTER_CONFIG = "adapter_config.json"
LORA_KEYS = ("enabled", "r", "alpha", "dropout", "target_modules")


def validate_lora(values: dict, field: str = "policy.lora") -> dict:
    """The `policy.lora` mapping, checked: {enabled, r, alpha, dropout, target_modules}."""
    if not isinstance(values, dict):
        raise ConfigError(f"{field}: expected a mapping with keys {', '.join(LORA_KEYS)}")
    unknown, missing = sorted(set(values) - set(LORA_KEYS)), [k for k in LORA_KEYS if k not in values]
    require(not unknown, field, f"unknown key(s) {', '.join(unknown)}; allowed: {', '.join(LORA_KEYS)}")
    require(not missing, field, f"missing key(s) {', '.join(missing)}")
    require(isinstance(values["enabled"], bool), f"{field}.enabled", "must be true or false")
    for name in ("r", "alpha"):
        v = values[name]
        require(isinstance(v, int) and not isinstance(v, bool) and v >= 1, f"{field}.{name}", f"must be an int >= 1, got {v!r}")
    dropout = values["dropout"]
    require(isinstance(dropout, (int, float)) and 0 <= dropout < 1, f"{field}.dropout", f"must be in [0, 1), got {dropout!r}")
    targets = values["target_modules"]
    ok = targets == "all-linear" or (isinstance(targets, list) and targets and all(isinstance(t, str) for t in targets))
    require(ok, f"{field}.target_modules", f"must be a non-empty list of module names or 'all-linear', got {targets!r}")
    return dict(values)


def peft_available() -> bool:
    try:
        import peft  # noqa: F401
    except ImportError:
        return False
    return True


def lora_config(settings: dict):
    """peft.LoraConfig of validated `policy.lora` settings."""
    if not peft_available():
        raise ConfigError("policy.lora.enabled: the peft package is not installed (pip install -r requirements.txt)")
    from peft import LoraConfig

    return LoraConfig(task_type="CAUSAL_LM", r=settings["r"], lora_alpha=settings["alpha"],
                      lora_dropout=float(settings["dropout"]), target_modules=settings["target_modules"])


def wrap(model, settings: dict):
    """`model` with a fresh LoRA adapter (only the adapter trains); a clear error for a bad target."""
    from peft import get_peft_model

    try:
        return get_peft_model(model, lora_config(settings))
    except ValueError as err:
        raise ConfigError(f"policy.lora.target_modules: {str(err).splitlines()[0]}") from None


def is_adapter(model) -> bool:
    return hasattr(model, "peft_config") and hasattr(model, "get_base_model")


def is_adapter_dir(directory: str | os.PathLike) -> bool:
    return (Path(directory) / ADAPTER_CONFIG).is_file()


def save_adapter(model, directory: Path) -> None:
    """Only the trained ("default") adapter: TRL's frozen "ref" copy is not part of the policy."""
    model.save_pretrained(str(directory), selected_adapters=["default"], safe_serialization=True)


def load_adapter_policy(directory: Path, base_model: str, trainable: bool = False):
    """The base model with the adapter of `directory` on top (trainable: the adapter keeps training)."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    if not base_model:
        raise MissingArtifact(f"adapter policy {directory}: relate_policy.json names no base_model")
    try:
        base = AutoModelForCausalLM.from_pretrained(base_model)
    except OSError as err:
        raise MissingArtifact(f"adapter policy {directory}: base model {base_model!r} not found ({err})") from None
    return PeftModel.from_pretrained(base, str(directory), is_trainable=trainable)


def merged(model):
    """A plain model with the adapter folded into its weights (a copy; `model` keeps its adapter)."""
    import copy

    return copy.deepcopy(model).merge_and_unload() if is_adapter(model) else model

