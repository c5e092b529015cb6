"""Print template.yaml as CloudFormation deploys it, after its two transforms, as JSON.

Run by SAM CLI's own interpreter (``.venv-sam/bin/python``), which has the SAM translator::

    .venv-sam/bin/python tests/support/sam_translate.py template.yaml '{"EnableJwtAuth": "true"}'

First what CloudFormation's AWS::LanguageExtensions does with this template: ``Fn::If``
on conditions of parameters, and ``Ref`` to parameters, are replaced by their values
(SAM CLI's own local emulation of it also rewrites ``Fn::Sub`` of resource attributes
into plain strings, which would hide the policies' real resources). Then the SAM
transform, offline: AWS managed policies come from the translator's bundled table.
"""

from __future__ import annotations

import json
import sys
from importlib.resources import files
from pathlib import Path
from typing import Any

from samcli.lib.translate.sam_template_validator import SamTemplateValidator
from samcli.yamlhelper import yaml_parse

NO_VALUE = {"Ref": "AWS::NoValue"}


class BundledManagedPolicies:
    """Stands in for ``ManagedPolicyLoader``, which would ask IAM."""

    def load(self) -> dict[str, str]:
        table: dict[str, dict[str, str]] = json.loads(
            files("samtranslator").joinpath("internal/data/aws_managed_policies.json").read_text()
        )
        return table["aws"]


def parameter_values(template: dict[str, Any], overrides: dict[str, str]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for name, spec in template.get("Parameters", {}).items():
        value = overrides.get(name, spec.get("Default"))
        if spec["Type"] == "CommaDelimitedList" and isinstance(value, str):
            value = [item.strip() for item in value.split(",")] if value else [""]
        values[name] = value
    return values


def resolve_language_extensions(template: dict[str, Any], overrides: dict[str, str]) -> dict[str, Any]:
    values = parameter_values(template, overrides)

    def value(node: Any) -> Any:
        if isinstance(node, dict) and set(node) == {"Ref"} and node["Ref"] in values:
            return values[node["Ref"]]
        return node

    def holds(condition: Any) -> bool:
        (function, args), *_ = condition.items()
        if function == "Fn::Equals":
            return bool(value(args[0]) == value(args[1]))
        if function == "Fn::Not":
            return not holds(args[0])
        if function == "Fn::And":
            return all(holds(arg) for arg in args)
        if function == "Fn::Or":
            return any(holds(arg) for arg in args)
        if function == "Condition":
            return holds(template["Conditions"][args])
        raise ValueError(f"unsupported condition {condition}")

    def walk(node: Any) -> Any:
        if isinstance(node, list):
            return [walk(item) for item in node if walk(item) != NO_VALUE]
        if not isinstance(node, dict):
            return node
        if set(node) == {"Fn::If"}:
            name, when_true, when_false = node["Fn::If"]
            return walk(when_true if holds(template["Conditions"][name]) else when_false)
        if set(node) == {"Ref"}:
            return value(node)
        resolved = {key: walk(item) for key, item in node.items()}
        return {key: item for key, item in resolved.items() if item != NO_VALUE}

    resolved: dict[str, Any] = walk(template)
    resolved["Transform"] = "AWS::Serverless-2016-10-31"
    return resolved


def translate(template_path: Path, overrides: dict[str, str]) -> dict[str, Any]:
    template = resolve_language_extensions(yaml_parse(template_path.read_text()), overrides)
    validator = SamTemplateValidator(
        template,
        BundledManagedPolicies(),
        region="us-east-1",
        parameter_overrides=overrides,  # type: ignore[arg-type]
    )
    translated: dict[str, Any] = yaml_parse(validator.get_translated_template_if_valid())
    return translated


if __name__ == "__main__":
    print(json.dumps(translate(Path(sys.argv[1]), json.loads(sys.argv[2]) if len(sys.argv) > 2 else {})))
