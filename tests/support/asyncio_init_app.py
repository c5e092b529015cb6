"""A function whose init code runs a coroutine with ``asyncio.run`` before its handler is built.

``asyncio.run`` leaves the thread without a current event loop, where Mangum looks for one.
``GET /loop`` says whether the request runs on the loop the lifespan started on.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request

from shared.app import create_app
from shared.lambda_handler import make_handler


async def warm_up() -> str:
    await asyncio.sleep(0)
    return "warm"


WARMED = asyncio.run(warm_up())


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
    yield {"startup_loop": asyncio.get_running_loop()}


app = create_app("asyncio-init", lifespan=lifespan)


@app.get("/loop")
async def loop(request: Request) -> dict[str, Any]:
    return {"on_startup_loop": asyncio.get_running_loop() is request.state.startup_loop, "warmed": WARMED}


handler = make_handler(app)
