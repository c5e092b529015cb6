"""Paths as output shows them: relative to the repository when inside it.

What a run prints or writes (``make run``'s banner, ``bench/results.md``) is copied into the docs:
it must name no directory of the machine that ran it.
"""

from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def shown(path: str | os.PathLike[str], root: Path = ROOT) -> str:
    """``path`` relative to ``root`` when inside it (a relative ``path`` is taken from the current
    directory), else as given. Symbolic links are kept: a venv's ``bin/python`` links out of it.
    """
    absolute = Path(os.path.abspath(path))
    for base in dict.fromkeys((Path(os.path.abspath(root)), root.resolve())):
        if absolute.is_relative_to(base):
            return absolute.relative_to(base).as_posix() or "."
    return os.fspath(path)
