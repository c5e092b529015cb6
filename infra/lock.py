"""Write ``requirements.txt``, the pip-readable export of ``uv.lock``.

``uv.lock`` pins every package the project installs, runtime and development alike, for
every Python and platform it installs on (one version each: ``fork-strategy = "fewest"``).
The Dockerfile and ``sam build`` install with pip, so they read this export of its runtime
part (``[project] dependencies`` plus the ``image`` group), hashes included:

    make lock       # after editing pyproject.toml: uv lock, then this module
    make upgrade    # every package to its newest release that fits, then this module

``tests/test_lock.py`` fails when the export, the lock and ``.venv`` disagree.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LOCK = ROOT / "requirements.txt"
UV = Path(sys.executable).parent / "uv"
HEADER = (
    "# The runtime part of uv.lock (pyproject.toml's dependencies and the image group), for pip:\n"
    "# the Docker image and sam build install it. Written by `make lock`: edit pyproject.toml, not this file.\n"
)


def exported() -> str:
    """What ``requirements.txt`` must hold for the current ``uv.lock`` (read offline, never re-resolved)."""
    export = [str(UV), "export", "--frozen", "--offline", "--no-dev", "--group", "image", "--no-emit-project"]
    result = subprocess.run([*export, "--no-header"], capture_output=True, text=True, cwd=ROOT, check=True)  # noqa: S603
    return HEADER + result.stdout


def main() -> None:
    LOCK.write_text(exported())
    print(f"wrote {LOCK.relative_to(ROOT)} from uv.lock")


if __name__ == "__main__":
    main()
