"""The function bench/task_status.py measures: ``POST /run?kinds=t,u`` queues one no-op task per kind
(``t``: tracked, ``u``: registered, untracked), in an app with tracking off and one with it on."""

from __future__ import annotations

from fastapi import BackgroundTasks, FastAPI

from shared.app import create_app
from shared.background import task
from shared.lambda_handler import make_handler


@task("bench.status.tracked", tracked=True)
async def tracked() -> None:
    return None


@task("bench.status.untracked")
async def untracked() -> None:
    return None


def build(track: bool) -> FastAPI:
    app = create_app(f"bench-status-{'on' if track else 'off'}", track_tasks=track)

    @app.post("/run")
    async def run(kinds: str, background_tasks: BackgroundTasks) -> dict[str, str]:
        for kind in kinds.split(","):
            background_tasks.add_task(tracked if kind == "t" else untracked)
        return {"queued": kinds}

    return app


app_off, app_on = build(False), build(True)
handler_off, handler_on = make_handler(app_off), make_handler(app_on)
