"""/api/profiles: the conversion profiles this master accepts, built-in and configured (``profiles:`` in the
master's config), each with every field of its effective definition (a configured one's ``base`` names its built-in)."""

from __future__ import annotations

import dataclasses
import enum
from typing import Any

from converter_common.profiles import Profile
from master.auth import Access
from master.handlers.base import BaseHandler


class ProfilesHandler(BaseHandler):
    access = {"GET": Access.READ}

    def get(self) -> None:
        profiles = [profile_to_dict(profile) for profile in self.config.profiles.values()]
        self.write_json({"profiles": profiles})


def profile_to_dict(profile: Profile) -> dict[str, Any]:
    """Every field of the profile, JSON-ready: whatever fields the table grows, the answer follows."""
    return {f.name: _plain(getattr(profile, f.name)) for f in dataclasses.fields(profile)}


def _plain(value: Any) -> Any:
    if isinstance(value, enum.Enum):
        return _plain(value.value)
    if isinstance(value, (tuple, list, frozenset, set)):
        return [_plain(v) for v in value]
    if dataclasses.is_dataclass(value):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    return value if value is None or isinstance(value, (str, int, float, bool)) else str(value)
