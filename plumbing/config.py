"""`params.yaml`: one section per stage, loaded into a config dataclass that validates itself.

Unknown keys, missing keys and wrong types are rejected with a message that names the
field (`simulate.days: expected int, got 'ten'`), so a typo never falls back to a default.
Config dataclasses carry types and validation, not values: every knob's one value is in
params.yaml. Another params file may hold only what differs from it: `extends: <file>`
(relative to the file that names it) loads that file first, then each section's keys of
this one replace the base's (a key's value is replaced whole, a mapping such as
`grpo.rewards` included). A key the base section lacks, and a key written twice in one
mapping, are refused.

    python -m plumbing.config configs/tiny.yaml > params.yaml   # the merged file (what DVC reads)
"""
from __future__ import annotations

import dataclasses
import os
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
    """`base` with each section's keys replaced by those of `changes` (new sections are added)."""
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
        merged[section].update(values)
    return merged


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
        return dict(value)
    if hint is Any:
        return value
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint is int and isinstance(value, bool) or not isinstance(value, hint):
        raise ConfigError(f"{name}: expected {hint.__name__}, got {value!r}")
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


def require(condition: bool, field: str, message: str) -> None:
    """For `__post_init__` checks: raise ConfigError naming the field."""
    if not condition:
        raise ConfigError(f"{field}: {message}")


def main(argv: list[str] | None = None) -> int:
    """Print a params file with its `extends:` base merged in (a full params.yaml)."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m plumbing.config <params file>", file=sys.stderr)
        return 2
    try:
        params = load_params(args[0])
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
