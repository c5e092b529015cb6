"""One lock: uv.lock pins every package, and every environment of the project carries exactly it.

The checks read the lock and what is installed; none asks the package index, so they give the
same answer on any day. The image's packages are checked against the lock in test_container.py,
the `sam build` layers' in test_sam_build.py.
"""

from __future__ import annotations

import re
import subprocess
import sys
import sysconfig
from collections import Counter
from pathlib import Path

from infra.lock import LOCK, UV, exported
from tests.support.lock import ROOT, locked_packages, locked_versions, versions_differing_from_the_lock

SAM_CLI = ROOT / "infra" / "sam-cli"


def uv(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(UV), *args, "--offline"], capture_output=True, text=True, cwd=ROOT)


def test_each_lock_agrees_with_its_pyproject() -> None:
    for project in (ROOT, SAM_CLI):
        result = uv("lock", "--check", "--project", str(project))
        assert result.returncode == 0, f"{project.name}: {result.stderr.strip()}: run `make lock`"


def test_every_package_has_one_version_for_every_python_and_platform() -> None:
    """So the test venv (3.11+), the image and sam build (3.12) run the same code."""
    for lock in (ROOT / "uv.lock", SAM_CLI / "uv.lock"):
        forked = [name for name, count in Counter(name for name, _ in locked_packages(lock)).items() if count > 1]
        assert forked == [], f"{lock.relative_to(ROOT)} pins several versions of {forked}"


def test_requirements_txt_is_the_export_of_the_lock() -> None:
    """What the Dockerfile and sam build install with pip is the lock's runtime part, hashes included."""
    assert LOCK.read_text() == exported(), "requirements.txt is not uv.lock's export: run `make lock`"
    pins = dict(re.findall(r"^([a-z0-9._-]+)==(\S+) \\$", LOCK.read_text(), re.MULTILINE))
    locked = locked_versions()  # parsed once: 0.2 s a time, for each of about fifty pins it took 12 s
    assert pins and all(locked[name] == version for name, version in pins.items())
    assert {"fastapi", "mangum", "structlog", "awslambdaric", "boto3"} <= pins.keys()
    assert not {"pytest", "moto", "uv", "mypy"} & pins.keys(), "dev tools stay out of the image"


def test_the_test_venv_holds_exactly_the_lock() -> None:
    """`make test` syncs .venv first: a package installed by hand or left from an older lock fails here."""
    site_packages = Path(sysconfig.get_paths()["purelib"])
    assert Path(sys.prefix) == ROOT / ".venv"
    assert versions_differing_from_the_lock([site_packages]) == {}, "run `make sync`"
    assert uv("sync", "--locked", "--check").returncode == 0, "run `make sync`"


def test_sam_cli_runs_from_its_own_lock() -> None:
    sam_venv = ROOT / ".venv-sam"
    (site_packages,) = sam_venv.glob("lib/python3.*/site-packages")
    assert versions_differing_from_the_lock([site_packages], SAM_CLI / "uv.lock") == {}, "run `make sync-sam`"
    assert locked_versions(SAM_CLI / "uv.lock")["aws-sam-cli"] == "1.170.0"


def test_the_bootstrapped_uv_is_the_locked_one() -> None:
    """The Makefile installs uv with pip before any venv exists; the lock pins the same version."""
    (pinned,) = re.findall(r"^UV_VERSION := (\S+)$", (ROOT / "Makefile").read_text(), re.MULTILINE)
    assert locked_versions()["uv"] == pinned
    version = subprocess.run([str(ROOT / ".venv-uv" / "bin" / "uv"), "--version"], capture_output=True, text=True)
    assert version.stdout.split()[1] == pinned
