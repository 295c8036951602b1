"""`params.yaml`: one section per stage, loaded into a config dataclass that validates itself.

Unknown keys, missing keys and wrong types are rejected with a message that names the
field (`simulate.days: expected int, got 'ten'`), so a typo never falls back to a default.
Config dataclasses carry types and validation, not values: every knob's one value is in
params.yaml. Another params file may hold only what differs from it: `extends: <file>`
(relative to the file that names it) loads that file first, then each section's keys of
this one replace the base's; a nested mapping (`simulate.drift`, `grpo.rewards`) is merged
key by key, so an overlay turns a reward off with weight 0 rather than by leaving it out.
A key the base section lacks, and a key written twice in one mapping, are refused.

    python -m plumbing.config configs/tiny.yaml > params.yaml   # the merged file (what DVC reads)
"""
from __future__ import annotations

import dataclasses
import math
import os
import re
import sys
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from plumbing.errors import ConfigError

DEFAULT_PARAMS = Path("params.yaml")
PROJECT_PARAMS = Path(__file__).resolve().parents[1] / DEFAULT_PARAMS  # whatever the cwd (checks run in a work dir)
EXTENDS = "extends"
T = TypeVar("T")

# Every top-level section a params file may hold: the stages' sections (params.yaml) and the
# external checks' (configs/real_corpus.yaml). A stage run refuses any other (a typo'd
# section would otherwise be ignored whole).
SECTIONS = (
    "simulate", "ingest", "ingest_elements", "validate", "training", "policy", "sft", "grpo", "train_ctcvr", "evaluate_ctcvr",
    "train_attribution", "evaluate_attribution", "combo_policy", "evaluate_combo", "serving", "evaluate",
    "ablation", "closed_loop", "publish", "upworthy", "advertisegen",
)
# The range of every numeric knob, whatever its field: a seed is a 64-bit integer (numpy,
# torch and Spark store it so), any other integer (a count, a size, a number of days) is at
# most ten billion in magnitude, and a real number is finite and at most a million in
# magnitude. Each config's `__post_init__` states a tighter range where it matters.
INT_LIMIT = 2**63
KNOB_INT_LIMIT = 10**10
KNOB_FLOAT_LIMIT = 1e6


class _UniqueKeyLoader(yaml.SafeLoader):
    """safe_load that refuses a key written twice in one mapping (PyYAML keeps the last silently)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def params_path(path: str | os.PathLike | None = None) -> Path:
    return Path(path or os.environ.get("RELATE_PARAMS") or DEFAULT_PARAMS)


def load_params(path: str | os.PathLike | None = None) -> dict[str, Any]:
    """The params file's sections, with its `extends:` base (if any) merged in."""
    return _load(params_path(path), ())


def _load(path: Path, chain: tuple[Path, ...]) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"params file not found: {path} (run from the project root or set RELATE_PARAMS)")
    if path.resolve() in chain:
        raise ConfigError(f"{path}: `{EXTENDS}` loops back to a file that extends it")
    with open(path, encoding="utf-8") as fh:
        try:
            params = yaml.load(fh, Loader=_UniqueKeyLoader)  # noqa: S506 (a SafeLoader subclass)
        except yaml.YAMLError as err:
            raise ConfigError(f"{path} is not valid YAML: {err}") from None
    if not isinstance(params, dict):
        raise ConfigError(f"{path} must be a mapping of stage sections")
    base = params.pop(EXTENDS, None)
    if base is None:
        return params
    if not isinstance(base, str) or not base.strip():
        raise ConfigError(f"{path}: {EXTENDS} must be the path of a params file, got {base!r}")
    return overlay(_load(path.parent / base, chain + (path.resolve(),)), params, path)


def overlay(base: dict[str, Any], changes: dict[str, Any], name: str | os.PathLike = "overlay") -> dict[str, Any]:
    """`base` with each section's keys replaced by those of `changes` (new sections are added;
    nested mappings are merged key by key)."""
    merged = {section: dict(values) if isinstance(values, dict) else values for section, values in base.items()}
    for section, values in changes.items():
        if section not in merged:
            merged[section] = values
            continue
        if not isinstance(values, dict) or not isinstance(merged[section], dict):
            raise ConfigError(f"{name}: section {section!r} must be a mapping, as in the file it extends")
        unknown = sorted(set(values) - set(merged[section]))
        if unknown:
            raise ConfigError(f"{name}: {', '.join(f'{section}.{k}' for k in unknown)} not in the file it extends")
        for key, value in values.items():
            merged[section][key] = _merged(merged[section][key], value)
    return merged


def _merged(base: Any, change: Any) -> Any:
    """A nested mapping (simulate.drift, grpo.rewards) keeps the base's keys the change leaves out;
    anything else is replaced. The section's own dataclass refuses a misspelt nested key."""
    if isinstance(base, dict) and isinstance(change, dict):
        return {**base, **{k: _merged(base.get(k), v) for k, v in change.items()}}
    return change


def _check_type(name: str, value: Any, hint: Any) -> Any:
    origin = typing.get_origin(hint)
    if origin is typing.Union or origin is types.UnionType:
        args = typing.get_args(hint)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _check_type(name, value, arg)
            except ConfigError:
                pass
        raise ConfigError(f"{name}: expected {hint}, got {value!r}")
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{name}: expected a list, got {value!r}")
        (item,) = typing.get_args(hint)[:1] or (Any,)
        return [_check_type(f"{name}[{i}]", v, item) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{name}: expected a mapping, got {value!r}")
        item = (typing.get_args(hint) + (Any, Any))[1]
        return {k: _check_type(f"{name}.{k}", v, item) for k, v in value.items()}
    if hint is Any:
        return value
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        try:
            return _check_float(name, float(value))
        except OverflowError:
            raise ConfigError(f"{name}: must be a finite number, got {value}") from None
    if hint is int and isinstance(value, bool) or not isinstance(value, hint):
        raise ConfigError(f"{name}: expected {hint.__name__}, got {value!r}")
    if hint is float:
        return _check_float(name, value)
    if hint is int:
        return _check_int(name, value)
    return value


def _refuse_non_finite(name: str, value: Any) -> None:
    """Any float in a section, however typed (a bare `dict` or `Any` field included), must be finite."""
    if isinstance(value, float):
        _check_float(name, value)
    if isinstance(value, dict):
        for key, item in value.items():
            _refuse_non_finite(f"{name}.{key}", item)
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            _refuse_non_finite(f"{name}[{i}]", item)


def _check_float(name: str, value: float) -> float:
    if not math.isfinite(value):
        raise ConfigError(f"{name}: must be a finite number, got {value!r}")
    if abs(value) > KNOB_FLOAT_LIMIT:
        raise ConfigError(f"{name}: must be at most {KNOB_FLOAT_LIMIT:,.0f} in magnitude (every real-valued knob), "
                          f"got {value!r}")
    return value


def _check_int(name: str, value: int) -> int:
    if name.rsplit(".", 1)[-1].endswith("seed"):
        if not -INT_LIMIT <= value < INT_LIMIT:
            raise ConfigError(f"{name}: must be a 64-bit integer (|value| < 2**63), got {value}")
    elif abs(value) > KNOB_INT_LIMIT:
        raise ConfigError(f"{name}: must be at most {KNOB_INT_LIMIT:,} in magnitude (every integer knob), got {value}")
    return value


def build_config(cls: type[T], section: str, values: dict[str, Any]) -> T:
    """Instantiate dataclass `cls` from a params section, checking keys and types."""
    if not isinstance(values, dict):
        raise ConfigError(f"params section {section!r} must be a mapping, got {values!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ConfigError(f"{section}: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(fields)}")
    _refuse_non_finite(section, values)
    kwargs = {}
    for name, field in fields.items():
        if name in values:
            kwargs[name] = _check_type(f"{section}.{name}", values[name], hints[name])
        elif field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{section}.{name}: missing (required)")
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{section}: {err}") from None


def load_config(cls: type[T], section: str, path: str | os.PathLike | None = None,
                overrides: dict[str, Any] | None = None) -> T:
    """Section `section` of the params file as `cls`; `overrides` replace some of its keys (checked alike).

    The one way to build a params-section config outside a stage (tests, bench, checks):
    the values come from a params file, and only what a caller changes is written there.
    """
    params = load_params(path)
    if section not in params:
        raise ConfigError(f"{params_path(path)} has no section {section!r}")
    values = params[section]
    if overrides:
        if not isinstance(values, dict):
            raise ConfigError(f"params section {section!r} must be a mapping, got {values!r}")
        values = {**values, **overrides}
    return build_config(cls, section, values)


def check_sections(params: dict[str, Any], path: str | os.PathLike) -> None:
    """Refuse a top-level section no stage or check reads (SECTIONS), naming it."""
    unknown = sorted(set(params) - set(SECTIONS))
    if unknown:
        raise ConfigError(f"{path}: unknown section(s) {', '.join(map(str, unknown))}; allowed: {', '.join(SECTIONS)}")


def project_root(path: str | os.PathLike) -> Path:
    """The directory of the file at the end of a params file's `extends:` chain (the file
    itself when it extends nothing): the project the params belong to."""
    path = Path(path).resolve()
    seen = set()
    while path not in seen:
        seen.add(path)
        with open(path, encoding="utf-8") as fh:
            params = yaml.load(fh, Loader=_UniqueKeyLoader)  # noqa: S506 (a SafeLoader subclass)
        base = params.get(EXTENDS) if isinstance(params, dict) else None
        if not isinstance(base, str):
            break
        path = (path.parent / base).resolve()
    return path.parent


def require(condition: bool, field: str, message: str) -> None:
    """For `__post_init__` checks: raise ConfigError naming the field."""
    if not condition:
        raise ConfigError(f"{field}: {message}")


def require_range(cfg: Any, prefix: str, bounds: dict[str, tuple[float, float]]) -> None:
    """For `__post_init__` checks: each named field within its closed [low, high], else ConfigError."""
    for name, (low, high) in bounds.items():
        value = getattr(cfg, name)
        bound = f"[{low:,}, {high:,}]" if isinstance(low, int) and isinstance(high, int) else f"[{low:g}, {high:g}]"
        require(low <= value <= high, f"{prefix}.{name}", f"must be in {bound}, got {value}")


# local, local[N], local[N,F], local[*], local-cluster[...], spark://host:port[,host:port], yarn, k8s://...,
# mesos://..., sc://... (Spark Connect)
_SPARK_MASTER = re.compile(
    r"local(\[(\*|[1-9][0-9]{0,3})(,[1-9][0-9]{0,3})?\])?|local-cluster\[[1-9][0-9]*,[1-9][0-9]*,[1-9][0-9]*\]"
    r"|spark://[A-Za-z0-9.\-]+:[0-9]{1,5}(,[A-Za-z0-9.\-]+:[0-9]{1,5})*|yarn"
    r"|(k8s|mesos|sc)://[A-Za-z0-9.\-_:/\[\]]+")


def require_spark_master(field: str, value: str) -> None:
    """A Spark master URL of a known form (local[*], local[4], spark://host:7077, yarn, k8s://..., sc://...)."""
    require(_SPARK_MASTER.fullmatch(value) is not None, field,
            f"must be a Spark master URL (local, local[N], local[*], spark://host:port, yarn, k8s://..., "
            f"mesos://..., sc://...), got {value!r}")


def main(argv: list[str] | None = None) -> int:
    """Print a params file with its `extends:` base merged in (a full params.yaml)."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m plumbing.config <params file>", file=sys.stderr)
        return 2
    try:
        params = load_params(args[0])
        check_sections(params, args[0])
    except ConfigError as err:
        print(err, file=sys.stderr)
        return 2
    sys.stdout.write(dump_params(params))
    return 0


class _ParamsDumper(yaml.SafeDumper):
    """Block mappings (one key a line, as params.yaml is written), flow lists ([a, b])."""


_ParamsDumper.add_representer(
    list, lambda dumper, value: dumper.represent_sequence("tag:yaml.org,2002:seq", value, flow_style=True))


def dump_params(params: dict[str, Any]) -> str:
    """`params` as the YAML of a full params file."""
    return yaml.dump(params, Dumper=_ParamsDumper, sort_keys=False, default_flow_style=False, allow_unicode=True,
                     width=110)


if __name__ == "__main__":
    raise SystemExit(main())
