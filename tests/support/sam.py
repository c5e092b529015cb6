"""SAM CLI and template.yaml for the packaging tests.

SAM CLI lives in its own venv (``.venv-sam``, installed by ``make``); here it runs with
telemetry off, its weekly version check already done and its AWS calls sent to 127.0.0.1, so it
never reaches the network.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import tempfile
import time
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from filelock import FileLock

from infra.template import load

ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = ROOT / "template.yaml"
SAM_VENV = ROOT / ".venv-sam"
SAM = SAM_VENV / "bin" / "sam"
LAMBDA_RUNTIME = ROOT / ".venv-lambda" / "runtime"
TRANSLATE = ROOT / "infra" / "sam-cli" / "translate.py"


NOWHERE = "http://127.0.0.1:9"
"""A local port nothing answers on: a SAM call to AWS is refused at once, never sent off the machine."""


def sam_environment(config_dir: Path, aws_endpoint: str = NOWHERE) -> dict[str, str]:
    """SAM CLI's variables: its own config directory, no telemetry, AWS at ``aws_endpoint``.

    `sam local invoke` asks STS for the account id before each invocation; sent to AWS from a
    machine without its credentials, botocore retried it for 8 s before SAM used the default.
    Against moto's server (``aws_endpoint``) it is answered at once; against ``NOWHERE``, one
    refused attempt.
    """
    config_dir.mkdir(parents=True, exist_ok=True)
    (config_dir / "metadata.json").write_text(json.dumps({"lastVersionCheck": time.time(), "telemetryEnabled": False}))
    variables = {**os.environ, "__SAM_CLI_APP_DIR": str(config_dir), "SAM_CLI_TELEMETRY": "0"}
    variables["AWS_ENDPOINT_URL"] = aws_endpoint
    if aws_endpoint == NOWHERE:
        variables["AWS_MAX_ATTEMPTS"] = "1"
    return variables


SAM_HINT = "SAM CLI's venv (.venv-sam) is not installed: run `make sync-sam` (or `make test`, which installs it)"


def require_sam() -> None:
    """Fail the test in one line saying what to run, not with a FileNotFoundError."""
    if not (SAM_VENV / "bin" / "python").exists():
        pytest.fail(SAM_HINT, pytrace=False)


def run_sam(
    args: list[str], config_dir: Path, timeout: float = 600, aws_endpoint: str = NOWHERE
) -> subprocess.CompletedProcess[str]:
    require_sam()
    env = sam_environment(config_dir, aws_endpoint)
    return subprocess.run([str(SAM), *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def load_template(path: Path = TEMPLATE) -> dict[str, Any]:
    """A CloudFormation template (short intrinsic tags included) as plain data.

    infra.template's loader, not cfn-lint's: importing cfn-lint takes seconds (sympy), paid by
    every pytest process that imports this (each xdist worker); test_template.py runs cfn-lint itself.
    """
    return load(path)


def logical_id(function: str) -> str:
    """``functions/image_resizer`` -> ``ImageResizerFunction``: the name ``make build-...`` maps back."""
    return "".join(part.capitalize() for part in function.split("_")) + "Function"


def function_folders() -> list[str]:
    return sorted(path.parent.name for path in (ROOT / "functions").glob("*/app.py"))


def http_functions(template: dict[str, Any] | None = None) -> list[str]:
    """The function folders the template routes an HTTP API path to."""
    specs = functions(template or load_template())
    return [name for name in function_folders() if logical_id(name) in specs and specs[logical_id(name)].http_paths()]


@dataclass(frozen=True)
class FunctionSpec:
    """A function of the template, its Globals merged in."""

    logical_id: str
    properties: dict[str, Any]
    environment: dict[str, Any]
    layers: list[str]

    @property
    def handler(self) -> str:
        return str(self.properties["Handler"])

    def http_paths(self) -> list[str]:
        events = self.properties.get("Events", {}).values()
        return [event["Properties"]["Path"] for event in events if event["Type"] == "HttpApi"]


def functions(template: dict[str, Any]) -> dict[str, FunctionSpec]:
    """Every ``AWS::Serverless::Function`` by logical id."""
    globals_ = template.get("Globals", {}).get("Function", {})
    global_env = globals_.get("Environment", {}).get("Variables", {})
    specs: dict[str, FunctionSpec] = {}
    for name, resource in template["Resources"].items():
        if resource["Type"] != "AWS::Serverless::Function":
            continue
        properties = {**globals_, **resource["Properties"], "Metadata": resource.get("Metadata", {})}
        environment = {**global_env, **resource["Properties"].get("Environment", {}).get("Variables", {})}
        layers = [*globals_.get("Layers", []), *resource["Properties"].get("Layers", [])]
        specs[name] = FunctionSpec(name, properties, environment, [layer["Ref"] for layer in layers])
    return specs


def translate(parameters: dict[str, str] | None = None) -> dict[str, Any]:
    """The template after AWS::LanguageExtensions and the SAM transform, as CloudFormation deploys it."""
    require_sam()
    result = subprocess.run(
        [str(SAM_VENV / "bin" / "python"), str(TRANSLATE), str(TEMPLATE), json.dumps(parameters or {})],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    translated: dict[str, Any] = json.loads(result.stdout)
    return translated


@cache
def translated_template() -> dict[str, Any]:
    """``translate()`` with the parameters' defaults, once per run.

    Under pytest-xdist the first worker writes it to a file of this run (``run_file``) that the
    others read: the SAM translator takes seconds, and tests are collected with it (test_iam.py).
    """
    path = run_file(f"translated-{hashlib.sha256(TEMPLATE.read_bytes()).hexdigest()[:16]}.json")
    if path is None:
        return translate()
    with FileLock(f"{path}.lock"):
        if not path.exists():
            path.write_text(json.dumps(translate()))
    translated: dict[str, Any] = json.loads(path.read_text())
    return translated


RUN_FILES = "fbt-test-{run}-"


def run_file(name: str) -> Path | None:
    """A file every worker of this pytest-xdist run shares (None without xdist); removed by workers.py."""
    run = os.environ.get("PYTEST_XDIST_TESTRUNUID")
    return Path(tempfile.gettempdir(), RUN_FILES.format(run=run) + name) if run else None
