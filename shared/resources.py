"""Names of the tables, buckets and queues template.yaml gives a function in its environment.

A function's own resource needs no field in ``Settings``: the template passes its name
(``ORDERS_TABLE: !Ref OrdersTable``), and ``make run`` and the tests pass its local name
(``infra/template.py``). Read it at import time, so that a missing variable stops the
function at start-up rather than at its first request.
"""

from __future__ import annotations

import os

from shared.settings import ConfigurationError


class MissingResource(ConfigurationError):
    """A wrong setting like any other: a container stops in one line with exit code 2."""


def resource_name(variable: str) -> str:
    value = os.environ.get(variable, "").strip()
    if not value:
        raise MissingResource(
            f"{variable} is not set: give the function `{variable}: !Ref <Resource>` under Environment in "
            f"template.yaml (make run and the tests take it from there), or set it (docker run -e {variable}=<name>)"
        )
    return value
