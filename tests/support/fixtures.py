"""Session-wide fixtures the packaging and container tests share (registered in tests/conftest.py).

``sam_build``: `sam build` into a temporary directory, once per run (test_sam_build.py runs
its artifacts under the runtime client, test_container_sam.py under `sam local`).
``image``: the project's Dockerfile built with plain ``docker build``, once per run.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.support.engine import RUN_ID, docker, require_engine
from tests.support.sam import ROOT, FunctionSpec, functions, load_template, logical_id, run_sam


@dataclass(frozen=True)
class Build:
    directory: Path
    template: dict[str, Any]

    def function(self, name: str) -> FunctionSpec:
        return functions(self.template)[logical_id(name)]


@pytest.fixture(scope="session")
def sam_build(tmp_path_factory: pytest.TempPathFactory) -> Build:
    directory = tmp_path_factory.mktemp("sam-build") / "build"
    result = run_sam(["build", "--build-dir", str(directory)], tmp_path_factory.mktemp("sam-config"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Build Succeeded" in result.stdout
    return Build(directory, load_template(directory / "template.yaml"))


@pytest.fixture(scope="session")
def docker_engine() -> None:
    """Skips (or, with REQUIRE_CONTAINER_ENGINE=1, fails) when no Docker engine answers."""
    require_engine()


@pytest.fixture(scope="session")
def image(docker_engine: None) -> Iterator[str]:
    tag = f"fbt-test-{RUN_ID}:image"
    started = time.monotonic()
    docker("build", "--tag", tag, str(ROOT), timeout=900)
    print(f"docker build: {time.monotonic() - started:.1f}s")
    try:
        yield tag
    finally:
        docker("image", "rm", "--force", tag, check=False)
