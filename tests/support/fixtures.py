"""Session-wide fixtures the packaging and container tests share (registered in tests/conftest.py).

``sam_build``: `sam build` into a temporary directory, once per run (test_sam_build.py runs
its artifacts under the runtime client, test_container_sam.py under `sam local`,
test_deploy_rehearsal.py deploys them to moto).
``image``: the project's Dockerfile built with plain ``docker build``, once per run.

Once per run, not once per process: under ``pytest -n`` (``make test``) each worker has its
own session, so the first worker that needs the build makes it in the run's directory, which
every worker shares, holding a file lock the others wait on; they then use what it made. The
image is removed when the run ends (by tests/support/workers.py on the process that hands the
tests out), not when the first worker's session ends.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from filelock import FileLock

from tests.support.engine import RUN_ID, docker, require_engine
from tests.support.sam import ROOT, FunctionSpec, functions, load_template, logical_id, run_sam

IMAGE_MADE = "image.json"
IMAGE_OUTPUT = "image"
"""The key under which a worker hands the image's tag to the controller (``config.workeroutput``)."""


@dataclass(frozen=True)
class Build:
    directory: Path
    template: dict[str, Any]

    def function(self, name: str) -> FunctionSpec:
        return functions(self.template)[logical_id(name)]


def xdist_worker() -> bool:
    return "PYTEST_XDIST_WORKER" in os.environ


def run_directory(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """This run's temporary directory: under xdist, the one every worker's own directory is in."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if xdist_worker() else base


def once_per_run(tmp_path_factory: pytest.TempPathFactory, name: str, make: Callable[[Path], None]) -> Path:
    """``run directory/name``, made by ``make`` (into an empty directory) by the first process that asks.

    A process that finds it being made waits for the lock; one that finds it failed makes it again.
    """
    directory = run_directory(tmp_path_factory) / name
    done = directory / ".done"
    with FileLock(f"{directory}.lock"):
        if not done.exists():
            directory.mkdir(exist_ok=True)
            make(directory)
            done.touch()
    return directory


def make_sam_build(directory: Path) -> None:
    result = run_sam(["build", "--build-dir", str(directory / "build")], directory / "sam-config")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Build Succeeded" in result.stdout


@pytest.fixture(scope="session")
def sam_build(tmp_path_factory: pytest.TempPathFactory) -> Build:
    directory = once_per_run(tmp_path_factory, "sam-build", make_sam_build) / "build"
    return Build(directory, load_template(directory / "template.yaml"))


@pytest.fixture(scope="session")
def docker_engine() -> None:
    """Skips (or, with REQUIRE_CONTAINER_ENGINE=1, fails) when no Docker engine answers."""
    require_engine()


@pytest.fixture(scope="session")
def image(
    docker_engine: None, tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[str]:
    def build(directory: Path) -> None:
        tag = f"fbt-test-{RUN_ID}:image"
        started = time.monotonic()
        docker("build", "--tag", tag, str(ROOT), timeout=900)
        print(f"docker build: {time.monotonic() - started:.1f}s")
        (directory / IMAGE_MADE).write_text(json.dumps(tag))

    directory = once_per_run(tmp_path_factory, "image", build)
    tag: str = json.loads((directory / IMAGE_MADE).read_text())
    yield tag
    if xdist_worker():  # other workers may still run it: removed when every worker is done
        request.config.workeroutput[IMAGE_OUTPUT] = tag  # type: ignore[attr-defined]
    else:
        remove_image(tag)


def remove_image(tag: str) -> None:
    docker("image", "rm", "--force", tag, check=False)
