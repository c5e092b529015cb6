"""What uv.lock pins: the versions every environment of the project must carry."""

from __future__ import annotations

import importlib.metadata
import tomllib
from collections.abc import Iterable
from pathlib import Path

from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
UV_LOCK = ROOT / "uv.lock"


def locked_packages(lock: Path = UV_LOCK) -> list[tuple[str, str]]:
    """(name, version) of every package in the lock, the project itself left out."""
    packages = tomllib.loads(lock.read_text())["package"]
    return [(canonicalize_name(p["name"]), p["version"]) for p in packages if "version" in p]


def locked_versions(lock: Path = UV_LOCK) -> dict[str, str]:
    return dict(locked_packages(lock))


def versions_differing_from_the_lock(paths: Iterable[Path], lock: Path = UV_LOCK) -> dict[str, tuple[str, str]]:
    """{name: (installed, locked)} for each distribution under ``paths`` that the lock pins otherwise (or not)."""
    locked = locked_versions(lock)
    differing = {}
    for distribution in importlib.metadata.distributions(path=[str(path) for path in paths]):
        name = canonicalize_name(distribution.metadata["Name"])
        if locked.get(name) != distribution.version:
            differing[name] = (distribution.version, locked.get(name, "not locked"))
    return differing
