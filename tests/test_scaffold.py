"""``make function``: a scaffolded function passes every template and function check of the suite at once.

The function is scaffolded into a copy of the project, where the suite's own checks run (the
template, the generic function checks, resources, IAM, the OpenAPI fuzz, `sam build`, ``make
run`` and the function's generated test), not a subset chosen for it: every test of those
modules but the ones that check one of the functions already there, which the suite itself
runs on the same code (tests/support/new_function.py). A name that cannot work is refused in
one line before anything is written, and a failure part-way leaves nothing behind.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from infra.scaffold import EXIT_NAME_REFUSED, EXIT_PROJECT, main, scaffold
from infra.servers import free_port, wait_until_healthy
from infra.template import Template
from tests.support.sam import ROOT, SAM_HINT

FUNCTION_CHECKS = [
    "tests/test_template.py",
    "tests/test_functions.py",
    "tests/test_resources.py",
    "tests/test_iam.py",
    "tests/test_openapi_fuzz.py",
    "tests/test_sam_build.py",
    "tests/test_local_stack.py",
]
"""Every test module that checks each function or the whole template: they run on the scaffolded copy,
less the tests of the functions that were there before (tests/support/new_function.py)."""


def project_copy(tmp_path: Path, *, with_sam: bool = True) -> Path:
    """The project's files in a scratch directory, the venvs linked (SAM CLI's only ``with_sam``)."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    copy = tmp_path / "project"
    for name in listed:
        if (ROOT / name).is_file():
            (copy / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, copy / name)
    (copy / ".venv").symlink_to(ROOT / ".venv")  # tests run tools from it (cfn-lint)
    if with_sam:
        (copy / ".venv-sam").symlink_to(ROOT / ".venv-sam")
        (copy / ".venv-lambda").symlink_to(ROOT / ".venv-lambda")  # sam build's layers (make test makes it)
    return copy


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(path.relative_to(root)): path.read_bytes() for path in sorted(root.rglob("*")) if path.is_file()}


def pytest_in(project: Path, *args: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    """A pytest run of its own in ``project``: not one of this run's xdist workers (their files are this run's)."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("PYTEST_XDIST_")}
    return subprocess.run(
        [sys.executable, "-X", "no_debug_ranges", "-m", "pytest", "-p", "no:cacheprovider", "-rfEs", *args],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.mark.slow
@pytest.mark.timeout(1800)  # the suite's template and function checks: minutes on 2 cores
def test_a_function_with_a_table_passes_every_template_and_function_check(tmp_path: Path) -> None:
    project = project_copy(tmp_path)
    written = scaffold("probe_orders", table=True, root=project)  # a name no project has yet

    assert sorted(str(path.relative_to(project)) for path in written) == [
        "functions/probe_orders/__init__.py",
        "functions/probe_orders/app.py",
        "infra/docker-compose.yml",
        "template.yaml",
        "tests/test_probe_orders.py",
    ]
    stack = Template.read(project / "template.yaml")
    assert stack.wiring()["PROBE_ORDERS_TABLE"] == "ProbeOrdersTable"
    assert {"Ref": "SendMailPolicy"} in stack.resources["ProbeOrdersFunction"]["Properties"]["Policies"]

    # On two workers, as `make test` runs the suite; -rA lists every test that passed.
    checks = ["-rA", "-n", "2", "--dist", "loadfile", "--no-loadscope-reorder"]
    checks += ["-p", "tests.support.new_function", "--new-function"]
    result = pytest_in(project, *checks, "probe_orders", "tests/test_probe_orders.py", *FUNCTION_CHECKS, timeout=1700)

    assert result.returncode == 0, result.stdout[-5000:]
    assert " skipped" not in result.stdout.splitlines()[-1], "every check ran"
    passed = {line.removeprefix("PASSED ") for line in result.stdout.splitlines() if line.startswith("PASSED ")}
    assert {
        "tests/test_probe_orders.py::test_create_confirms_by_email",
        "tests/test_template.py::test_function_error_and_throttle_alarms_cover_every_function",
        "tests/test_template.py::test_outputs_give_the_api_and_any_docs_url_points_at_its_function",
        "tests/test_template.py::test_cfn_lint_reports_nothing",
        "tests/test_functions.py::test_each_function_serves_its_health_as_itself[probe_orders]",
        "tests/test_resources.py::test_docker_compose_names_every_resource_that_settings_has_no_default_for",
        "tests/test_iam.py::test_each_scenario_needs_every_action_on_every_resource_of_its_role_and_no_other"
        "[ProbeOrdersFunction]",
        "tests/test_openapi_fuzz.py::test_probe_orders_schema[POST /probe_orders]",
        "tests/test_sam_build.py::test_each_function_with_its_layers_stays_under_30_mb",
        "tests/test_local_stack.py::test_make_run_serves_every_function_and_runs_their_background_work",
    } <= passed
    assert not {test for test in passed if "[UsersFunction" in test or "test_users_" in test}, "the suite runs those"


def entrypoint(project: Path, port: int, output: Path, **env: str) -> subprocess.Popen[bytes]:
    """``python -m shared.entrypoint``, what ``docker run IMAGE`` runs: every function on one port."""
    base = {"PATH": os.environ["PATH"], "HOME": "/tmp", "AWS_DEFAULT_REGION": "us-east-1", "PORT": str(port)}
    with output.open("wb") as file:  # a file, not a pipe: a chatty server never blocks on it
        return subprocess.Popen(
            [sys.executable, "-m", "shared.entrypoint"],
            cwd=project,
            env={**base, "LOG_FORMAT": "json", **env},
            stdout=file,
            stderr=file,
        )


def test_the_image_entry_point_serves_a_new_function_with_its_table_or_stops_in_one_line(tmp_path: Path) -> None:
    project = project_copy(tmp_path, with_sam=False)
    scaffold("probe_orders", table=True, root=project)

    # docker run without the table's variable: one line saying what to set, exit 2.
    output = tmp_path / "entrypoint.log"
    assert entrypoint(project, free_port(), output).wait(timeout=120) == 2, output.read_text()
    [line] = output.read_text().splitlines()
    assert line.startswith("configuration error: PROBE_ORDERS_TABLE is not set")
    assert "docker run -e PROBE_ORDERS_TABLE=" in line

    # With it, as docker-compose gives it: the gateway serves the new function under its prefix.
    port = free_port()
    served = entrypoint(project, port, output, PROBE_ORDERS_TABLE="fastapi-tasks-probe-orders")
    try:
        wait_until_healthy(f"http://127.0.0.1:{port}/probe_orders/health", served, timeout=120)
    finally:
        served.send_signal(signal.SIGTERM)
        served.wait(timeout=60)
    assert served.returncode == 0, output.read_text()


def test_without_a_table_the_function_only_queues_its_email(tmp_path: Path) -> None:
    (tmp_path / "functions").mkdir()
    (tmp_path / "tests").mkdir()
    shutil.copy2(ROOT / "template.yaml", tmp_path / "template.yaml")
    shutil.copy2(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    scaffold("alerts", table=False, root=tmp_path)

    app = (tmp_path / "functions" / "alerts" / "app.py").read_text()
    assert "add_task(send_message" in app
    assert "resource_name" not in app
    stack = Template.read(tmp_path / "template.yaml")
    assert "AlertsFunction" in stack.functions()
    assert "AlertsTable" not in stack.resources
    assert stack.resources["AlertsFunction"]["Properties"]["Policies"] == [
        {"Ref": "EnqueueDurableTasksPolicy"},
        {"Ref": "SendMailPolicy"},
    ]


def small_project(tmp_path: Path) -> Path:
    """What the scaffold reads and writes: template.yaml, compose, ruff's settings, a taken name."""
    (tmp_path / "functions" / "users").mkdir(parents=True)
    (tmp_path / "tests").mkdir()
    (tmp_path / "infra").mkdir()
    for name in ("template.yaml", "pyproject.toml", "infra/docker-compose.yml"):
        shutil.copy2(ROOT / name, tmp_path / name)
    return tmp_path


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("", "give the function a name"),
        ("a b", "NAME='a b' must be a lower-case Python identifier"),
        ("Orders", "NAME='Orders' must be a lower-case Python identifier"),
        ("1orders", "NAME='1orders' must be a lower-case Python identifier"),
        ("class", "NAME='class' is a Python keyword"),
        ("match", "NAME='match' is a Python keyword"),
        ("print", "NAME='print' is a Python builtin"),
        ("json", "NAME='json' is already a module's name"),
        ("fastapi", "NAME='fastapi' is already a module's name"),
        ("infra", "NAME='infra' is already a module's name"),
        ("users", "NAME='users': functions/users already exists"),
        ("total", "FunctionErrorsAlarm in template.yaml already has a metric with the id total"),
    ],
)
def test_a_name_that_cannot_work_is_refused_in_one_line_with_exit_2_and_nothing_written(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str, message: str
) -> None:
    project = small_project(tmp_path)
    before = snapshot(project)

    with pytest.raises(SystemExit) as exited:
        main([name, "--table"], root=project)

    assert exited.value.code == EXIT_NAME_REFUSED
    [line] = capsys.readouterr().err.splitlines()
    assert line.startswith("make function: ")
    assert message in line
    assert snapshot(project) == before


def test_two_names_are_one_line_and_exit_2_not_a_usage_message(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["a", "b"], root=small_project(tmp_path))

    assert exited.value.code == EXIT_NAME_REFUSED
    [line] = capsys.readouterr().err.splitlines()
    assert line.startswith("make function: unrecognized arguments: b")


def test_make_passes_a_name_with_a_space_as_one_name() -> None:
    dry_run = subprocess.run(
        ["make", "-n", "function", "NAME=a b"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    assert '-m infra.scaffold "a b"' in dry_run


def test_a_project_ruff_cannot_format_in_gets_one_line_exit_1_and_nothing_written(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    project = small_project(tmp_path)
    (project / "pyproject.toml").write_text("[tool.ruff]\nline-length = 'long'\n")
    before = snapshot(project)

    with pytest.raises(SystemExit) as exited:
        main(["orders", "--table"], root=project)

    assert exited.value.code == EXIT_PROJECT
    [line] = capsys.readouterr().err.splitlines()
    assert line.startswith("make function: ruff could not format functions/orders/app.py")
    assert snapshot(project) == before


def test_a_write_failing_part_way_leaves_nothing_behind(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    project = small_project(tmp_path)
    before = snapshot(project)
    write_text = Path.write_text

    def fail_on_the_template(self: Path, data: str, *args: object, **kwargs: object) -> int:
        if self.name == "template.yaml" and data != before["template.yaml"].decode():
            raise OSError(28, "No space left on device")
        return write_text(self, data, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(Path, "write_text", fail_on_the_template)
    with pytest.raises(OSError, match="No space left"):
        scaffold("orders", table=True, root=project)

    assert snapshot(project) == before
    assert not (project / "functions" / "orders").exists()


def test_the_generated_test_without_sam_cli_says_what_to_install(tmp_path: Path) -> None:
    project = project_copy(tmp_path, with_sam=False)
    scaffold("probe_orders", table=True, root=project)

    result = pytest_in(project, "tests/test_probe_orders.py", timeout=300)

    assert result.returncode != 0
    assert SAM_HINT in result.stdout
    assert "FileNotFoundError" not in result.stdout
