"""Measurement 5: artifact sizes from ``sam build`` and of the image, and the enqueue overhead of durable tasks.

``sam build`` (the project's own template.yaml and Makefile builds) runs into a scratch
directory, so the user's ``.aws-sam`` is left alone; each function's and layer's directory
is summed unzipped (apparent file sizes). A function is judged with its layers (Globals'
and its own), since Lambda unpacks them all into its environment. The image is built with plain
``docker build`` when a Docker engine answers; its own layers are its size less its base's.
The durable-task numbers come from ``bench.durable``
(owned by the durable-tasks work), run in a child process because it mocks AWS with moto.
"""

from __future__ import annotations

import functools
import json
import math
import os
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.env import PYTHON, ROOT, child_env, progress
from bench.model import Section, Table, Target, fmt
from infra.template import load as load_template

LIMIT_MB = 30.0
IMAGE_LIMIT_MB = 60.0
MB = 1_000_000


@dataclass
class Artifact:
    name: str
    bytes: int
    largest: list[tuple[str, int]] = field(default_factory=list)
    layers: list[str] = field(default_factory=list)
    is_layer: bool = False


def function_layers(template: Path) -> dict[str, list[str]]:
    """Each function's layers (``Globals.Function.Layers`` then its own), by logical id."""
    document = load_template(template)
    inherited = document.get("Globals", {}).get("Function", {}).get("Layers", [])
    layers: dict[str, list[str]] = {}
    for name, resource in document.get("Resources", {}).items():
        if resource.get("Type") == "AWS::Serverless::Function":
            refs = [*inherited, *resource.get("Properties", {}).get("Layers", [])]
            layers[name] = [ref["Ref"] for ref in refs if isinstance(ref, dict) and "Ref" in ref]
    return layers


def sam_cli() -> str | None:
    local = ROOT / ".venv-sam" / "bin" / "sam"
    return str(local) if local.exists() else shutil.which("sam")


def _tree_size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(item.stat().st_size for item in path.rglob("*") if item.is_file() and not item.is_symlink())


def build_directory(workdir: Path) -> Path:
    """Where :func:`sam_build` puts the build (``template.yaml`` and one directory per resource)."""
    return workdir / "sam-build"


@functools.cache
def sam_build(workdir: Path) -> tuple[list[Artifact], str]:
    """Build every function; returns the artifacts, or none and why not.

    Cached: one build per run, measured here and imported by the cold-start section.
    """
    sam = sam_cli()
    if sam is None:
        return [], "not built: SAM CLI not found (`make sam-build` installs it into .venv-sam)"
    build_dir = build_directory(workdir)
    progress("artifacts: sam build (every function, into a scratch directory)")
    env = {**child_env(workdir), "SAM_CLI_TELEMETRY": "0"}
    env.pop("PYTHONPATH", None)
    try:
        completed = subprocess.run(  # noqa: S603 - our own interpreter and tools, fixed arguments
            [sam, "build", "--build-dir", str(build_dir)],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=900,
        )
    except subprocess.TimeoutExpired:
        return [], "not built: `sam build` took more than 15 minutes"
    if completed.returncode != 0:
        tail = " / ".join((completed.stdout + completed.stderr).strip().splitlines()[-3:])
        return [], f"not built: `sam build` failed ({tail})"
    layers = function_layers(ROOT / "template.yaml")
    artifacts = []
    for directory in sorted(path for path in build_dir.iterdir() if path.is_dir()):
        is_layer = directory.name not in layers
        contents = directory / "python" if is_layer and (directory / "python").is_dir() else directory
        sizes = sorted(((item.name, _tree_size(item)) for item in contents.iterdir()), key=lambda item: -item[1])
        artifacts.append(
            Artifact(directory.name, _tree_size(directory), sizes[:3], layers.get(directory.name, []), is_layer)
        )
    return artifacts, "built by `sam build` for this run"


def _docker(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["docker", *args], cwd=ROOT, capture_output=True, text=True, timeout=900)  # noqa: S603, S607


def image_own_bytes() -> tuple[int | None, str]:
    """The bytes the Dockerfile adds above its final base image, or None and why not."""
    if shutil.which("docker") is None or _docker("version").returncode != 0:
        return None, "not measured: no Docker engine answers (DOCKER_HOST, else the default socket)"
    bases = [line.split()[1] for line in (ROOT / "Dockerfile").read_text().splitlines() if line.startswith("FROM ")]
    tag = f"fastapi-background-tasks-bench:{os.getpid()}"
    progress("artifacts: docker build (the image, to size its own layers)")
    built = _docker("build", "--quiet", "--tag", tag, str(ROOT))
    if built.returncode != 0:
        return None, f"not measured: `docker build` failed ({built.stderr.strip().splitlines()[-1:]})"
    try:
        sizes = _docker("image", "inspect", "--format", "{{.Size}}", tag, bases[-1]).stdout.split()
    finally:
        _docker("image", "rm", tag)
    return int(sizes[0]) - int(sizes[1]), f"built with `docker build`, above {bases[-1]}"


def durable_numbers(workdir: Path, requests: int, warmup: int) -> dict[str, Any] | str:
    """``bench.durable.measure()``'s numbers, or why there are none."""
    if not (ROOT / "bench" / "durable.py").exists():
        return "not measured: bench/durable.py is missing"
    progress(f"durable: {requests} requests per case (1 and 10 tasks, in-process and SQS via moto)")
    code = (
        "import json, bench.durable as durable\n"
        f"print(json.dumps(durable.measure(requests={requests}, warmup={warmup})))\n"
    )
    completed = subprocess.run(  # noqa: S603 - our own interpreter and tools, fixed arguments
        [PYTHON, "-c", code], cwd=ROOT, env=child_env(workdir), capture_output=True, text=True, timeout=600
    )
    if completed.returncode != 0:
        return f"not measured: bench.durable failed ({completed.stderr.strip().splitlines()[-1:]})"
    numbers: dict[str, Any] = json.loads(completed.stdout.strip().splitlines()[-1])
    return numbers


def measure(workdir: Path, build: bool = True, durable_requests: int = 200, durable_warmup: int = 20) -> Section:
    if build:
        artifacts, how = sam_build(workdir)
    else:
        artifacts, how = [], "not built: skipped (--no-sam)"
    durable = durable_numbers(workdir, durable_requests, durable_warmup)
    image = image_own_bytes() if build else (None, "not measured: skipped (--no-sam)")
    return _section(artifacts, how, durable, image)


def _section(
    artifacts: list[Artifact], how: str, durable: dict[str, Any] | str, image: tuple[int | None, str]
) -> Section:
    section = Section(
        key="artifacts",
        title="5. Deployable artifacts and durable-task enqueue",
        intro=(
            "Sizes: each function's and layer's directory from `sam build` (template.yaml, `BuildMethod: "
            f"makefile`), unzipped, in MB (10^6 bytes); a function is judged with its layers. Build: {how}."
        ),
    )
    sizes = Table(
        "Artifact size from `sam build`, unzipped (MB)",
        ["artifact", "own", "layers", "with its layers", "largest entries", "target"],
    )
    by_name = {artifact.name: artifact for artifact in artifacts}
    for artifact in artifacts:
        largest = ", ".join(f"{name} {artifact_mb(size)}" for name, size in artifact.largest)
        if artifact.is_layer:
            sizes.rows.append(
                [f"{artifact.name} (layer)", artifact_mb(artifact.bytes), "", "", largest, "see functions"]
            )
            continue
        attached = [by_name[name] for name in artifact.layers if name in by_name]
        total = artifact.bytes + sum(layer.bytes for layer in attached)
        met = total < LIMIT_MB * MB
        layer_cells = ", ".join(f"{layer.name} {artifact_mb(layer.bytes)}" for layer in attached)
        sizes.rows.append(
            [
                artifact.name,
                artifact_mb(artifact.bytes),
                layer_cells,
                artifact_mb(total),
                largest,
                "met" if met else "**missed**",
            ]
        )
        parts = sorted(attached, key=lambda item: item.bytes, reverse=True)
        section.targets.append(
            Target(
                name=f"(5) artifact size, {artifact.name}",
                goal=f"< {LIMIT_MB:g} MB unzipped, with its layers",
                measured=f"{artifact_mb(total)} MB ({artifact_mb(artifact.bytes)} own + layers)"
                if attached
                else f"{artifact_mb(artifact.bytes)} MB",
                met=met,
                why="; ".join(
                    f"{part.name} {artifact_mb(part.bytes)} MB ("
                    + ", ".join(f"{name} {artifact_mb(size)}" for name, size in part.largest)
                    + ")"
                    for part in parts
                )
                + ("" if met else "; Lambda's own limit is 250 MB unzipped, so it deploys, over this budget"),
            )
        )
    if not artifacts:
        sizes.rows.append([how, "", "", "not measured"])
        section.targets.append(Target("(5) artifact size", f"< {LIMIT_MB:g} MB unzipped", how, None, how))
    image_bytes, image_how = image
    image_met = None if image_bytes is None else image_bytes < IMAGE_LIMIT_MB * MB
    image_measured = image_how if image_bytes is None else f"{artifact_mb(image_bytes)} MB ({image_how})"
    sizes.rows.append(
        [
            "container image, own layers",
            "" if image_bytes is None else artifact_mb(image_bytes),
            "",
            "",
            image_how,
            {None: "not measured", True: "met", False: "**missed**"}[image_met],
        ]
    )
    section.targets.append(
        Target(
            name="(5) container image, own layers",
            goal=f"< {IMAGE_LIMIT_MB:g} MB above the base image",
            measured=image_measured,
            met=image_met,
            why="no pip; PRUNED as in the layers; botocore's model prose emptied (Dockerfile)",
        )
    )
    section.tables.append(sizes)
    if isinstance(durable, str):
        section.notes.append(f"Durable tasks: {durable}.")
    else:
        section.tables.append(_durable_table(durable))
        section.notes.append(
            f"Durable tasks: SQS is {durable.get('sqs', 'moto')}: the overhead is the template's work (JSON encoding, "
            "size checks, building the SendMessageBatch call) plus moto handling the call in-process, with no network; "
            "in-region SQS adds its own latency after the response. 'request' is the whole request "
            "through Starlette's TestClient, post-response work included; 'before response' is what "
            "`TaskExecutor.take` adds before the response is sent."
        )
    return section


def artifact_mb(size: int) -> str:
    return fmt(size / MB, 1)


def _durable_table(durable: dict[str, Any]) -> Table:
    table = Table(
        f"Durable (SQS) against in-process tasks, {durable.get('requests', '?')} requests each",
        [
            "tasks per request",
            "in-process request p50 / p95 ms",
            "durable request p50 / p95 ms",
            "enqueue overhead p50 ms",
            "before response, in-process / durable p50 us",
        ],
    )
    for count, inline in durable.get("inline", {}).items():
        sent = durable.get("durable", {}).get(count, {})
        overhead = durable.get("enqueue_overhead_ms", {}).get(count, math.nan)
        table.rows.append(
            [
                str(count),
                _pair(inline.get("request_ms", {})),
                _pair(sent.get("request_ms", {})),
                fmt(float(overhead)),
                f"{fmt(inline.get('before_response_us', {}).get('p50', math.nan), 0)} / "
                f"{fmt(sent.get('before_response_us', {}).get('p50', math.nan), 0)}",
            ]
        )
    return table


def _pair(summary: dict[str, float]) -> str:
    return f"{fmt(summary.get('p50', math.nan))} / {fmt(summary.get('p95', math.nan))}"
