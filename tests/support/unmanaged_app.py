"""A function that must not start: it mounts a FastAPI app that has no task layer."""

from __future__ import annotations

from fastapi import BackgroundTasks, FastAPI

from shared.app import create_app
from shared.lambda_handler import make_handler

app = create_app("unmanaged")
plain = FastAPI()


@plain.post("/work")
async def work(background_tasks: BackgroundTasks) -> None:
    pass


app.mount("/plain", plain)

handler = make_handler(app)
