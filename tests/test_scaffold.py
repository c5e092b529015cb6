"""``make function``: a scaffolded function passes its own tests, the generic ones and the IAM guard at once."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from infra.scaffold import scaffold
from infra.template import Template
from tests.support.sam import ROOT


def project_copy(tmp_path: Path) -> Path:
    """The project's files (not its venvs: SAM CLI's is linked) in a scratch directory."""
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
    (copy / ".venv-sam").symlink_to(ROOT / ".venv-sam")
    return copy


def test_a_function_with_a_table_is_ready_for_make_test(tmp_path: Path) -> None:
    project = project_copy(tmp_path)
    written = scaffold("probe_orders", table=True, root=project)  # a name no project has yet

    assert sorted(str(path.relative_to(project)) for path in written) == [
        "functions/probe_orders/__init__.py",
        "functions/probe_orders/app.py",
        "template.yaml",
        "tests/test_probe_orders.py",
    ]
    stack = Template.read(project / "template.yaml")
    assert stack.wiring()["PROBE_ORDERS_TABLE"] == "ProbeOrdersTable"
    assert {"Ref": "SendMailPolicy"} in stack.resources["ProbeOrdersFunction"]["Properties"]["Policies"]
    tests = ["tests/test_probe_orders.py", "tests/test_functions.py", "tests/test_openapi_fuzz.py"]
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-v",
            "-p",
            "no:cacheprovider",
            "-p",
            "no:logging",
            "-k",
            "probe_orders",
            *tests,
        ],
        cwd=project,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-3000:]
    for test in (
        "tests/test_probe_orders.py::test_create_confirms_by_email PASSED",
        "tests/test_functions.py::test_each_function_serves_its_health_as_itself[probe_orders] PASSED",
        "tests/test_openapi_fuzz.py::test_probe_orders_schema PASSED",
    ):
        assert test in result.stdout


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


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("users", r"functions/users already exists"),
        ("Orders", r"NAME='Orders' must be a lower-case Python identifier"),
    ],
)
def test_a_name_taken_or_invalid_is_refused_before_writing(tmp_path: Path, name: str, message: str) -> None:
    (tmp_path / "functions" / "users").mkdir(parents=True)
    shutil.copy2(ROOT / "template.yaml", tmp_path / "template.yaml")
    with pytest.raises(SystemExit, match=message):
        scaffold(name, table=True, root=tmp_path)
    assert (tmp_path / "template.yaml").read_text() == (ROOT / "template.yaml").read_text()
