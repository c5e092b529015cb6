"""The environment every process of the bench runs in: local only, never real AWS."""

from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PYTHON = sys.executable

SAFE_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_REGION": "us-east-1",
    "LOG_FORMAT": "json",
    "LOG_LEVEL": "INFO",
    "PYTHONPATH": str(ROOT),
}

# Anything that would change what is measured or reach a real AWS account.
_DROPPED = frozenset(
    {
        "AWS_PROFILE",
        "AWS_LAMBDA_RUNTIME_API",
        "AWS_ENDPOINT_URL",
        "TASK_BACKEND",
        "DURABLE_TASKS",
        "TASK_TIMEOUT_SECONDS",
    }
)


def child_env(workdir: Path, **extra: str) -> dict[str, str]:
    """``os.environ`` made safe for a child process: fake credentials, no Lambda, files in ``workdir``."""
    env = {key: value for key, value in os.environ.items() if key not in _DROPPED}
    env.update(SAFE_ENV)
    env["NOTIFICATION_LOG_PATH"] = str(workdir / "notifications.log")
    env.update(extra)
    return env


def progress(message: str) -> None:
    print(f"[bench] {message}", flush=True)
