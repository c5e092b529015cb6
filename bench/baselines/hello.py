"""The smallest FastAPI + Mangum Lambda function: the cold-start baseline."""

from __future__ import annotations

from fastapi import FastAPI
from mangum import Mangum

app = FastAPI()


@app.get("/")
async def hello() -> dict[str, str]:
    return {"message": "hello"}


handler = Mangum(app, lifespan="off")
