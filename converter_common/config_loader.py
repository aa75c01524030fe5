"""Build frozen configuration dataclasses from YAML, refusing unknown keys and bad values.

Each section is a frozen dataclass; a field's type annotation says what the YAML value must be.
``Duration`` fields take seconds or a string with units (``500ms``, ``30m``, ``1h30m``); ``Size``
fields take bytes or a string with binary units (``4MiB``, ``64GiB``).
A section may define ``validate(self, key)`` for checks that go beyond types (ranges, URLs): it calls
``require_positive`` / ``report`` (or raises ``ConfigError``). ``build`` collects every problem of the
whole file and raises one ``ConfigError`` listing them, one ``config error: key: problem`` line each.
"""

from __future__ import annotations

import argparse
import contextvars
import dataclasses
import re
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """One or more configuration values are missing, unknown or invalid; the message names each key.

    ``key`` is the first problem's key; ``problems`` holds every ``(key, message)`` pair, one line each
    in the message.
    """

    def __init__(self, key: str, message: str, *more: tuple[str, str]):
        self.problems: tuple[tuple[str, str], ...] = ((key, message), *more)
        super().__init__("\n".join(f"config error: {k}: {m}" for k, m in self.problems))
        self.key = key


@dataclasses.dataclass(frozen=True)
class Units:
    """``Annotated`` marker: the field's YAML value is parsed by ``parse(value, key)`` (a number or a string)."""

    parse: Callable[[Any, str], Any]


_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_DURATION_PART = re.compile(r"\s*(\d+(?:\.\d+)?|\.\d+)\s*(ms|s|m|h|d)")
_SIZE_UNITS = {"B": 1, "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30, "TiB": 1 << 40}
_SIZE = re.compile(r"\s*(\d+(?:\.\d+)?|\.\d+)\s*(B|KiB|MiB|GiB|TiB)?\s*")
_NUMBER = re.compile(r"\s*(\d+(?:\.\d+)?|\.\d+)\s*")


def parse_duration(value: Any, key: str) -> float:
    """Seconds from a number or a string: ``500ms``, ``10s``, ``30m``, ``2h``, ``1d``, ``1h30m``, largest unit first."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str):
        if _NUMBER.fullmatch(value):
            return float(value)
        text, pos, seconds, last = value.strip(), 0, 0.0, float("inf")
        while pos < len(text):
            match = _DURATION_PART.match(text, pos)
            if match is None or _DURATION_UNITS[match.group(2)] >= last:
                break
            last = _DURATION_UNITS[match.group(2)]
            seconds, pos = seconds + float(match.group(1)) * last, match.end()
        else:
            if text:
                return seconds
    raise ConfigError(key, f"{value!r} is not a duration (use seconds or a number with ms, s, m, h, d: 30m, 1h30m)")


def parse_size(value: Any, key: str) -> int:
    """Bytes from an integer or a string like ``512KiB``, ``4MiB``, ``64GiB`` (binary units; B, KiB, MiB, GiB, TiB)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and (match := _SIZE.fullmatch(value)):
        size = float(match.group(1)) * _SIZE_UNITS[match.group(2) or "B"]
        if size == int(size):
            return int(size)
    raise ConfigError(key, f"{value!r} is not a size (use bytes or a number with B, KiB, MiB, GiB, TiB: 4MiB, 64GiB)")


Duration = Annotated[float, Units(parse_duration)]
"""Seconds; YAML may write a number or ``500ms`` / ``10s`` / ``30m`` / ``2h`` / ``1d`` / ``1h30m``."""
Size = Annotated[int, Units(parse_size)]
"""Bytes (or bytes per second); YAML may write an integer or ``512KiB`` / ``4MiB`` / ``64GiB``."""

# The problems found so far by the ``build`` in progress; None outside ``build`` (then ``report`` raises).
_problems: contextvars.ContextVar[list[tuple[str, str]] | None] = contextvars.ContextVar("config_problems",
                                                                                         default=None)


def report(key: str, message: str) -> None:
    """Record a problem with ``key``; inside ``build`` checking goes on (all problems are raised together)."""
    problems = _problems.get()
    if problems is None:
        raise ConfigError(key, message)
    problems.append((key, message))


class _Reported(Exception):
    """A nested section could not be built; its problems are recorded already."""


def _record(exc: ConfigError) -> None:
    for key, message in exc.problems:
        report(key, message)


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
    """Create ``cls`` (a dataclass) from a mapping, recursing into nested dataclass fields.

    Every problem (unknown key, wrong type, bad value, failed ``validate``) is collected; if there are any,
    one ``ConfigError`` lists them all. A field with a problem keeps its default so the rest can be checked.
    """
    if _problems.get() is not None:  # nested: the outer build collects
        return _build(cls, data, prefix)
    problems: list[tuple[str, str]] = []
    token = _problems.set(problems)
    try:
        instance = _build(cls, data, prefix)
    finally:
        _problems.reset(token)
    if problems:
        raise ConfigError(*problems[0], *problems[1:])
    return instance


def _build(cls: type[T], data: Any, prefix: str) -> T | None:
    problems = _problems.get()
    if data is None:
        data = {}
    if not isinstance(data, dict):
        report(prefix or "<root>", "must be a mapping")
        data = {}
    hints = typing.get_type_hints(cls, include_extras=True)
    names = {f.name for f in dataclasses.fields(cls)}
    for key in data:
        if key not in names:
            report(_join(prefix, str(key)), f"unknown key (known: {', '.join(sorted(names))})")
    values = {}
    complete = True
    for field in dataclasses.fields(cls):
        key = _join(prefix, field.name)
        required = field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING
        if field.name in data:
            before = len(problems)
            try:
                value = _coerce(hints[field.name], data[field.name], key)
            except ConfigError as exc:
                _record(exc)
            except _Reported:
                pass
            if len(problems) == before:
                values[field.name] = value
            elif required:
                complete = False
        elif required:
            if dataclasses.is_dataclass(hints[field.name]):
                values[field.name] = _build(hints[field.name], {}, key)
                complete = complete and values[field.name] is not None
            else:
                report(key, "required")
                complete = False
    if not complete:
        return None
    instance = cls(**values)
    validate = getattr(instance, "validate", None)
    if validate is not None:
        try:
            validate(prefix)
        except ConfigError as exc:
            _record(exc)
    return instance


def _coerce(kind: Any, value: Any, key: str) -> Any:
    if dataclasses.is_dataclass(kind):
        instance = build(kind, value, key)
        if instance is None:
            raise _Reported
        return instance
    origin = typing.get_origin(kind)
    if origin is Annotated:
        for marker in kind.__metadata__:
            if isinstance(marker, Units):
                return marker.parse(value, key)
        return _coerce(kind.__origin__, value, key)
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
        report(key, f"must be {'>= 0' if allow_zero else '> 0'}, got {value!r}")


def parse_daemon_args(prog: str, description: str, argv: list[str] | None) -> argparse.Namespace:
    """The command line both daemons share: ``--config PATH`` and ``--check-config``."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--config", help="path to config.yaml (defaults apply when omitted)")
    parser.add_argument("--check-config", action="store_true", help="validate the configuration and exit")
    return parser.parse_args(argv)
