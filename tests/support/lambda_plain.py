"""The test function behind a plain ``Mangum`` entry point, not ``make_handler``'s."""

from __future__ import annotations

from mangum import Mangum

from tests.support.lambda_app import app

handler = Mangum(app, lifespan="off")
