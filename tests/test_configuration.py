"""A wrong setting fails at start: one line naming the variable, its value and what is expected.

Containers exit with code 2 and no traceback; on Lambda the init phase fails with that line.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from infra.runtime_api import InitFailed, RuntimeApiEmulator, RuntimeClientProcess
from infra.servers import ROOT
from shared.settings import EXIT_CONFIGURATION, ConfigurationError, load_settings

QUEUE = "https://sqs.us-east-1.amazonaws.com/123456789012/fastapi-tasks"


@pytest.mark.parametrize(
    ("variable", "value", "expected"),
    [
        ("TASK_QUEUE_URL", "garbage", "expected an SQS queue URL"),
        ("TASK_QUEUE_URL", "https://sqs.us-east-1.amazonaws.com/fastapi-tasks", "expected an SQS queue URL"),
        ("TASK_TIMEOUT_SECONDS", "ten", "valid number"),
        ("SHUTDOWN_GRACE_SECONDS", "-1", "greater than 0"),
        ("WORKER_WAIT_SECONDS", "25", "less than or equal to 20"),
        ("LOG_FORMAT", "xml", "'auto', 'json' or 'console'"),
        ("UPLOAD_ALLOWED_TYPES", "image/png", "expected a JSON value"),
        # Out of range, not finite, or not what it names: each refused, with the value as written.
        ("LOG_LEVEL", "verbose", "'DEBUG', 'INFO', 'WARNING', 'ERROR' or 'CRITICAL'"),
        ("SHUTDOWN_GRACE_SECONDS", "inf", "finite number"),
        ("SHUTDOWN_GRACE_SECONDS", "-inf", "finite number"),
        ("SHUTDOWN_GRACE_SECONDS", "nan", "finite number"),
        ("SHUTDOWN_GRACE_SECONDS", "1e308", "less than or equal to 3600"),
        ("TASK_TIMEOUT_SECONDS", "1e308", "less than or equal to 86400"),
        ("TASK_ENQUEUE_BACKOFF_SECONDS", "inf", "finite number"),
        ("TASK_RUNNING_NOTICE_SECONDS", "-1", "greater than or equal to 0"),
        ("TASK_RUNNING_NOTICE_SECONDS", "soon", "valid number"),
        ("PORT", "99999", "expected a port number, 1 to 65535"),
        ("PORT", "0", "expected a port number, 1 to 65535"),
        ("WORKER_METRICS_PORT", "70000", "less than or equal to 65535"),
        ("AWS_ENDPOINT_URL", "garbage", "expected an http:// or https:// URL"),
        ("AWS_ENDPOINT_URL", "http://127.0.0.1:99999", "expected an http:// or https:// URL"),
        ("AWS_ENDPOINT_URL", "ftp://127.0.0.1:5000", "expected an http:// or https:// URL"),
        ("TASK_MODULES", "no.such.module", "no module named 'no.such.module'"),
        ("TASK_MODULES", "shared.tasks,shared.no_such_tasks", "no module named 'shared.no_such_tasks'"),
        ("THUMBNAIL_SIZES", "[128, 0]", "greater than 0"),
        ("TASK_MAX_RECEIVES", "5000", "less than or equal to 1000"),
        ("UPLOAD_PART_BYTES", str(10 * 1024**3), "less than or equal to"),
        ("AWS_DEFAULT_REGION", "us east", "expected a region name"),
        ("MAIL_SENDER", "no-reply", "expected an e-mail address"),
        ("ITEMS_NOTIFY_TO", "catalog at example.com", "expected an e-mail address"),
    ],
)
def test_a_wrong_setting_is_one_line_naming_variable_value_and_expectation(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, expected: str
) -> None:
    monkeypatch.setenv(variable, value)

    with pytest.raises(ConfigurationError) as raised:
        load_settings()

    message = str(raised.value)
    assert "\n" not in message
    assert message.startswith(f"{variable}={value!r}: ")
    assert expected in message


def test_a_sender_with_a_display_name_is_accepted(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAIL_SENDER", "Shop <no-reply@example.com>")
    assert load_settings().mail_sender == "Shop <no-reply@example.com>"


def test_a_valid_queue_url_is_accepted(monkeypatch: pytest.MonkeyPatch) -> None:
    for url in (
        QUEUE,
        "http://127.0.0.1:5000/123456789012/tasks",
        "https://sqs.eu-west-1.amazonaws.com/000000000000/t.fifo",
    ):
        monkeypatch.setenv("TASK_QUEUE_URL", url)
        assert load_settings().task_queue_url == url


def test_settings_read_variables_in_any_case_aliases_and_json_lists(monkeypatch: pytest.MonkeyPatch) -> None:
    # What pydantic-settings read, without it: the names, case-insensitive, the aliases, JSON for lists.
    monkeypatch.setenv("log_level", "debug")
    monkeypatch.setenv("Upload_Allowed_Types", '["image/png"]')
    monkeypatch.setenv("THUMBNAIL_SIZES", "[64]")
    monkeypatch.setenv("POWERTOOLS_METRICS_NAMESPACE", "Shop")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-1")
    monkeypatch.setenv("LAMBDA_DEADLINE_MARGIN_MS", "250")
    monkeypatch.setenv("METRICS_NAMESPACE", "ignored: the field reads its alias")

    settings = load_settings()

    assert settings.log_level == "DEBUG"
    assert settings.upload_allowed_types == ("image/png",)
    assert settings.thumbnail_sizes == (64,)
    assert settings.metrics_namespace == "Shop"
    assert settings.aws_region == "eu-west-1"
    assert settings.lambda_deadline_margin_ms == 250


def run(command: list[str], **env: str) -> subprocess.CompletedProcess[str]:
    base = {"PATH": "/usr/bin:/bin", "AWS_DEFAULT_REGION": "us-east-1", "LOG_FORMAT": "json", "HOME": "/tmp"}
    return subprocess.run(
        [sys.executable, *command], cwd=ROOT, env={**base, **env}, capture_output=True, text=True, timeout=60
    )


@pytest.mark.parametrize(
    ("command", "env", "names"),
    [
        (["-m", "shared.serve", "users", "--port", "1"], {"DURABLE_TASKS": "email.send_welcom"}, "'email.send_welcom'"),
        (
            ["-m", "shared.serve", "users", "--port", "1"],
            {"DURABLE_TASKS": "email.send_welcome", "TASK_QUEUE_URL": "garbage"},
            "TASK_QUEUE_URL='garbage'",
        ),
        (
            ["-m", "shared.entrypoint", "serve"],
            {"FUNCTION": "all", "SHUTDOWN_GRACE_SECONDS": "soon"},
            "SHUTDOWN_GRACE_SECONDS='soon'",
        ),
        (
            ["-m", "shared.entrypoint", "worker"],
            {"TASK_QUEUE_URL": QUEUE, "WORKER_BATCH_SIZE": "50"},
            "WORKER_BATCH_SIZE='50'",
        ),
        (["-m", "shared.worker"], {}, "TASK_QUEUE_URL is not set"),
        (
            ["-m", "functions.worker"],
            {"TASK_QUEUE_URL": QUEUE, "WORKER_CONCURRENCY": "0"},
            "WORKER_CONCURRENCY='0'",
        ),
        (["-m", "shared.entrypoint"], {"FUNCTION": "user"}, "FUNCTION='user': expected all or one of items,"),
        (["-m", "shared.entrypoint"], {"PORT": "http"}, "PORT='http': expected a port number"),
        (["-m", "shared.serve", "notifications"], {"PORT": "99999"}, "PORT='99999': expected a port number"),
        (["-m", "shared.serve", "notifications", "--port", "99999"], {}, "--port '99999': expected a port number"),
        (["-m", "shared.serve", "notifications"], {"SHUTDOWN_GRACE_SECONDS": "inf"}, "SHUTDOWN_GRACE_SECONDS='inf'"),
        (["-m", "shared.serve", "notifications"], {"LOG_LEVEL": "verbose"}, "LOG_LEVEL='verbose'"),
        (
            ["-m", "shared.worker"],
            {"TASK_QUEUE_URL": QUEUE, "TASK_MODULES": "no.such.module"},
            "TASK_MODULES='no.such.module': no module named 'no.such.module'",
        ),
        (
            ["-m", "functions.worker"],
            {"TASK_QUEUE_URL": QUEUE, "AWS_ENDPOINT_URL": "garbage"},
            "AWS_ENDPOINT_URL='garbage': expected an http:// or https:// URL",
        ),
        (
            ["-m", "shared.entrypoint", "worker"],
            {"TASK_QUEUE_URL": QUEUE, "SHUTDOWN_GRACE_SECONDS": "1e308"},
            "SHUTDOWN_GRACE_SECONDS='1e308'",
        ),
        (
            ["-m", "shared.worker"],
            {"TASK_QUEUE_URL": QUEUE, "AWS_DEFAULT_REGION": "us east"},
            "AWS_DEFAULT_REGION='us east': expected a region name",
        ),
        (
            ["-m", "shared.entrypoint"],
            {"AWS_LAMBDA_RUNTIME_API": "127.0.0.1:9", "FUNCTION": "all"},
            "FUNCTION='all': on Lambda, set FUNCTION=<name>",
        ),
    ],
)
def test_a_container_with_a_wrong_setting_exits_2_with_one_line(
    command: list[str], env: dict[str, str], names: str
) -> None:
    result = run(command, **env)

    assert result.returncode == EXIT_CONFIGURATION, result.stderr
    [line] = result.stderr.splitlines()
    assert line.startswith("configuration error: ")
    assert names in line
    assert "Traceback" not in result.stdout + result.stderr


def test_an_unknown_entry_point_command_is_one_line_and_exit_2() -> None:
    result = run(["-m", "shared.entrypoint", "serv"])

    assert result.returncode == 2
    assert result.stderr.splitlines() == ["unknown command 'serv': expected one of serve, worker, healthcheck"]


def test_a_misspelt_durable_task_names_the_registered_ones(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DURABLE_TASKS", "email.send_welcom,audit.record")
    monkeypatch.setenv("TASK_QUEUE_URL", QUEUE)
    from shared.background import build_executor

    with pytest.raises(ConfigurationError, match=r"'email.send_welcom' is not a registered task.*email.send_welcome"):
        build_executor()


def test_durable_task_names_are_checked_against_every_task_module(monkeypatch: pytest.MonkeyPatch) -> None:
    """A function that imported none of the task modules yet still accepts any registered name."""
    result = run(
        ["-c", "from shared.background import build_executor; build_executor(); print('ok')"],
        DURABLE_TASKS="files.process_upload,search.index_item",
        TASK_QUEUE_URL=QUEUE,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith("ok")


def test_on_lambda_a_wrong_setting_fails_the_init_phase_with_its_line() -> None:
    with RuntimeApiEmulator() as api:
        process = RuntimeClientProcess(api, "functions.users.app.handler", env={"DURABLE_TASKS": "email.send_welcom"})
        try:
            with pytest.raises(InitFailed):
                api.wait_ready(60, alive=process.alive)
        finally:
            process.close()
    assert api.init_error is not None
    body = api.init_error["body"]
    assert body["errorType"] == "ConfigurationError"
    assert body["errorMessage"].startswith("DURABLE_TASKS='email.send_welcom': 'email.send_welcom' is not a registered")
