"""The Lambda entry point of a function: Mangum over the same FastAPI app."""

from __future__ import annotations

from fastapi import FastAPI
from mangum import Mangum


def make_handler(app: FastAPI) -> Mangum:
    return Mangum(app, lifespan="off")
