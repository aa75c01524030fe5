"""Build frozen configuration dataclasses from YAML, refusing unknown keys and bad values.

Each section is a frozen dataclass; a field's type annotation says what the YAML value must be.
A section may define ``validate(self, key)`` returning nothing or raising ``ConfigError`` for
checks that go beyond types (ranges, URLs).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """A configuration value is missing, unknown or invalid; the message names the key."""

    def __init__(self, key: str, message: str):
        super().__init__(f"config error: {key}: {message}")
        self.key = key


def load_yaml(path: str | Path) -> dict[str, Any]:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(str(path), f"cannot read file ({exc.strerror})") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(str(path), f"invalid YAML ({exc.__class__.__name__}: {exc})".splitlines()[0]) from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(str(path), "top level must be a mapping")
    return data


def build(cls: type[T], data: Any, prefix: str = "") -> T:
    """Create ``cls`` (a dataclass) from a mapping, recursing into nested dataclass fields."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(prefix or "<root>", "must be a mapping")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for key in data:
        if key not in names:
            raise ConfigError(_join(prefix, str(key)), f"unknown key (known: {', '.join(sorted(names))})")
    values = {}
    for field in dataclasses.fields(cls):
        key = _join(prefix, field.name)
        if field.name in data:
            values[field.name] = _coerce(hints[field.name], data[field.name], key)
        elif field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
            if dataclasses.is_dataclass(hints[field.name]):
                values[field.name] = build(hints[field.name], {}, key)
            else:
                raise ConfigError(key, "required")
    instance = cls(**values)
    validate = getattr(instance, "validate", None)
    if validate is not None:
        validate(prefix)
    return instance


def _coerce(kind: Any, value: Any, key: str) -> Any:
    if dataclasses.is_dataclass(kind):
        return build(kind, value, key)
    origin = typing.get_origin(kind)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(kind)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(option, value, key)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(key, f"invalid value {value!r}")
    if origin is tuple:
        if not isinstance(value, list):
            raise ConfigError(key, f"must be a list, got {type(value).__name__}")
        (item_kind, _) = typing.get_args(kind)
        return tuple(_coerce(item_kind, item, f"{key}[{i}]") for i, item in enumerate(value))
    if kind is bool:
        if not isinstance(value, bool):
            raise ConfigError(key, f"must be true or false, got {value!r}")
        return value
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(key, f"must be an integer, got {value!r}")
        return value
    if kind is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(key, f"must be a number, got {value!r}")
        return float(value)
    if kind is str:
        if not isinstance(value, str) or not value:
            raise ConfigError(key, f"must be a non-empty string, got {value!r}")
        return value
    if kind is Path:
        if not isinstance(value, str) or not value:
            raise ConfigError(key, f"must be a path, got {value!r}")
        return Path(value)
    raise TypeError(f"unsupported config type {kind!r} for {key}")


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def require_positive(key: str, value: float, *, allow_zero: bool = False) -> None:
    if value < 0 or (value == 0 and not allow_zero):
        raise ConfigError(key, f"must be {'>= 0' if allow_zero else '> 0'}, got {value!r}")
