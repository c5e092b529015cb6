"""A pytest plugin for the scaffold's check (tests/test_scaffold.py): only what a new function can change.

``pytest -p tests.support.new_function --new-function orders ...`` in a project where
``make function NAME=orders`` just ran deselects each test that checks one of the functions
that were there before: a test named for one (``test_users_schema``, ``test_items_stores_...``)
or parametrized by one (``[users]``, ``[ItemsFunction-...]``, ``[items-http-api]``). Those run
on exactly the same code in the suite itself; a new function cannot change what they find.
Every other test runs: each one parametrized by the new function, and each one that goes over
every function or the whole template (the template's checks, `sam build`, ``make run``, ...),
except those marked ``not_per_function``: what they check (Ctrl-C, a worker's restart, an
alarm's parameters) is the same whichever functions exist, and the suite runs them.
"""

from __future__ import annotations

import pytest

from tests.support.sam import function_folders, logical_id


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--new-function", required=True, help="the function `make function` just added")


OF_THE_OTHERS = {"test_the_fuzz_reached_storage"}
"""Tests of what the other functions' tests did (the fuzz of users, items and uploads wrote to moto)."""


def of_another_function(item: pytest.Item, others: set[str]) -> bool:
    if getattr(item, "originalname", item.name) in OF_THE_OTHERS or item.get_closest_marker("not_per_function"):
        return True
    names = others | {logical_id(name) for name in others}
    callspec = getattr(item, "callspec", None)
    if callspec is not None and callspec.id.split("-")[0] in names:
        return True
    name = getattr(item, "originalname", item.name)
    return any(name.startswith(f"test_{other}_") for other in others)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    new = config.getoption("new_function")
    others = set(function_folders()) - {new}
    assert new in function_folders(), f"no functions/{new}"
    kept = [item for item in items if not of_another_function(item, others)]
    if len(kept) < len(items):
        config.hook.pytest_deselected(items=[item for item in items if of_another_function(item, others)])
        items[:] = kept
