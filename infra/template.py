"""template.yaml, the one declaration of the stack, read for local AWS.

The template declares the tables, buckets and queues, each function's environment and
its role. Locally nothing restates them: ``infra.local_resources`` creates the template's
resources in moto under local names, and ``environment()`` gives a function the variables
the template gives it, each reference (``USERS_TABLE: !Ref UsersTable``) replaced by its
local value. ``make run``, ``infra.local_stack provision``, the tests' moto fixtures and
``sam build``'s runtime tests all read it from here.

A local name is ``fastapi-tasks-`` and the logical id in kebab case without its type
(``UsersTable``: ``fastapi-tasks-users``), unless the environment already holds a value for
the variable that references the resource (``TASK_QUEUE_URL=.../my-queue``: ``my-queue``).
A parameter's local value is likewise its environment variable, else its default.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
TEMPLATE = ROOT / "template.yaml"
LOCAL_PREFIX = "fastapi-tasks"
LOCAL_TYPES = {"AWS::DynamoDB::Table": "Table", "AWS::S3::Bucket": "Bucket", "AWS::SQS::Queue": "Queue"}
"""The resource types created locally, and the suffix their logical ids drop in local names."""


def load(path: Path = TEMPLATE) -> dict[str, Any]:
    """The template as plain data, short tags as their long form (``!Ref X``: ``{"Ref": "X"}``)."""
    import yaml

    class Loader(yaml.SafeLoader):  # type: ignore[misc]
        pass

    def intrinsic(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> dict[str, Any]:
        if isinstance(node, yaml.ScalarNode):
            value: Any = loader.construct_scalar(node)
            if suffix == "GetAtt":
                value = value.split(".", 1)
        elif isinstance(node, yaml.SequenceNode):
            value = loader.construct_sequence(node, deep=True)
        else:
            value = loader.construct_mapping(node, deep=True)
        return {suffix if suffix in ("Ref", "Condition") else f"Fn::{suffix}": value}

    Loader.add_multi_constructor("!", intrinsic)
    data: dict[str, Any] = yaml.load(path.read_text(), Loader)  # noqa: S506 (a SafeLoader subclass)
    return data


def local_name(logical_id: str, resource_type: str) -> str:
    base = logical_id.removesuffix(LOCAL_TYPES.get(resource_type, "")) or logical_id
    return f"{LOCAL_PREFIX}-" + re.sub(r"(?<!^)(?=[A-Z])", "-", base).lower()


@dataclass(frozen=True)
class Template:
    data: dict[str, Any]

    @classmethod
    def read(cls, path: Path = TEMPLATE) -> Template:
        return cls(load(path))

    @property
    def resources(self) -> dict[str, dict[str, Any]]:
        resources: dict[str, dict[str, Any]] = self.data["Resources"]
        return resources

    def of_type(self, resource_type: str) -> dict[str, dict[str, Any]]:
        """``{logical id: Properties}`` of every resource of ``resource_type``, in template order."""
        return {
            logical_id: resource.get("Properties", {})
            for logical_id, resource in self.resources.items()
            if resource["Type"] == resource_type
        }

    def functions(self) -> list[str]:
        return list(self.of_type("AWS::Serverless::Function"))

    def function_variables(self, function: str) -> dict[str, Any]:
        """The environment the template gives ``function``: Globals, then its own (unresolved)."""
        own = self.resources[function]["Properties"].get("Environment", {}).get("Variables", {})
        return {**self.global_variables(), **own}

    def global_variables(self) -> dict[str, Any]:
        variables: dict[str, Any] = (
            self.data.get("Globals", {}).get("Function", {}).get("Environment", {}).get("Variables", {})
        )
        return variables

    def wiring(self) -> dict[str, str]:
        """``{variable: referenced name}`` for every variable any function gets as a ``!Ref``.

        One variable names one thing across the whole template (the local stack serves every
        function in one process, with one environment).
        """
        wiring: dict[str, str] = {}
        variables = [self.global_variables()] + [
            self.resources[name]["Properties"].get("Environment", {}).get("Variables", {}) for name in self.functions()
        ]
        for scope in variables:
            for variable, value in scope.items():
                reference = value["Ref"] if isinstance(value, dict) and set(value) == {"Ref"} else None
                if reference and wiring.setdefault(variable, reference) != reference:
                    raise ValueError(
                        f"template.yaml: {variable} refers to both {wiring[variable]} and {value['Ref']}; "
                        "give each resource its own variable"
                    )
        return wiring

    def _variable_of(self, target: str) -> str | None:
        return next((variable for variable, ref in self.wiring().items() if ref == target), None)

    def local_names(self, environ: Mapping[str, str] | None = None) -> dict[str, str]:
        """``{logical id: local name}`` of every table, bucket and queue."""
        environ = os.environ if environ is None else environ
        names = {}
        for resource_type in LOCAL_TYPES:
            for logical_id in self.of_type(resource_type):
                variable = self._variable_of(logical_id)
                given = environ.get(variable, "") if variable else ""
                names[logical_id] = (
                    given.rstrip("/").rsplit("/", 1)[-1] if given else local_name(logical_id, resource_type)
                )
        return names

    def parameter(self, name: str, environ: Mapping[str, str] | None = None) -> str:
        """A parameter's local value: the variable that carries it, if set, else its default."""
        environ = os.environ if environ is None else environ
        variable = self._variable_of(name)
        if variable and variable in environ:
            return environ[variable]
        return str(self.data["Parameters"][name].get("Default", ""))

    def environment(
        self,
        values: Mapping[str, str],
        function: str | None = None,
        *,
        parameters: bool = True,
        environ: Mapping[str, str] | None = None,
    ) -> dict[str, str]:
        """The variables of ``function`` (``None``: the wiring of every function), resolved locally.

        ``values`` maps a resource's logical id to its local value (``!Ref`` of a queue is its
        URL, of a table or bucket its name); references to anything else (the log group) are
        left out, and so are parameters unless ``parameters``.
        """
        if function is None:
            variables: dict[str, Any] = {variable: {"Ref": target} for variable, target in self.wiring().items()}
        else:
            variables = self.function_variables(function)
        resolved = {}
        for variable, value in variables.items():
            if not isinstance(value, dict):
                resolved[variable] = str(value)
            elif set(value) == {"Ref"} and value["Ref"] in values:
                resolved[variable] = values[value["Ref"]]
            elif value == {"Ref": "AWS::StackName"}:
                resolved[variable] = LOCAL_PREFIX
            elif parameters and set(value) == {"Ref"} and value["Ref"] in self.data.get("Parameters", {}):
                resolved[variable] = self.parameter(value["Ref"], environ)
        return resolved

    def name_environment(self, environ: Mapping[str, str] | None = None) -> dict[str, str]:
        """The variables naming a table or bucket, as the tests and ``Settings`` see them locally."""
        names = self.local_names(environ)
        named = {
            logical_id: names[logical_id] for logical_id in names if logical_id not in self.of_type("AWS::SQS::Queue")
        }
        return self.environment(named, parameters=False)


@cache
def template() -> Template:
    """template.yaml, read once per process."""
    return Template.read()
