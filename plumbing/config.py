"""`params.yaml`: one section per stage, loaded into a config dataclass that validates itself.

Unknown keys, missing keys and wrong types are rejected with a message that names the
field (`simulate.days: expected int, got 'ten'`), so a typo never falls back to a default.
"""
from __future__ import annotations

import dataclasses
import os
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from plumbing.errors import ConfigError

DEFAULT_PARAMS = Path("params.yaml")
T = TypeVar("T")


def params_path(path: str | os.PathLike | None = None) -> Path:
    return Path(path or os.environ.get("RELATE_PARAMS") or DEFAULT_PARAMS)


def load_params(path: str | os.PathLike | None = None) -> dict[str, Any]:
    path = params_path(path)
    if not path.is_file():
        raise ConfigError(f"params file not found: {path} (run from the project root or set RELATE_PARAMS)")
    with open(path, encoding="utf-8") as fh:
        try:
            params = yaml.safe_load(fh)
        except yaml.YAMLError as err:
            raise ConfigError(f"{path} is not valid YAML: {err}") from None
    if not isinstance(params, dict):
        raise ConfigError(f"{path} must be a mapping of stage sections")
    return params


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


def load_config(cls: type[T], section: str, path: str | os.PathLike | None = None) -> T:
    params = load_params(path)
    if section not in params:
        raise ConfigError(f"{params_path(path)} has no section {section!r}")
    return build_config(cls, section, params[section])


def require(condition: bool, field: str, message: str) -> None:
    """For `__post_init__` checks: raise ConfigError naming the field."""
    if not condition:
        raise ConfigError(f"{field}: {message}")
