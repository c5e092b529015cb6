"""Print a SAM template as CloudFormation deploys it, after its two transforms, as JSON.

Run by SAM CLI's own interpreter (``.venv-sam/bin/python``), which has the SAM translator::

    .venv-sam/bin/python infra/sam-cli/translate.py template.yaml '{"EnableJwtAuth": "true"}'

First what CloudFormation's AWS::LanguageExtensions does with this template: ``Fn::If``
on conditions of parameters, and ``Ref`` to parameters, are replaced by their values.
SAM CLI's own local emulation of it is not used: it also rewrites ``Fn::Sub`` of resource
attributes and pseudo parameters into plain strings with local stand-ins (``AWS::StackName``
becomes ``local``), which would hide the policies' real resources and misname the log groups.
Pseudo parameters stay references, for CloudFormation to resolve. Then the SAM transform,
offline: AWS managed policies come from the translator's bundled table.

Used by the tests (tests/support/sam.py) and by ``make deploy-rehearsal``
(infra/deploy_rehearsal.py), which deploys the result to moto's CloudFormation: moto runs
neither transform.
"""

from __future__ import annotations

import argparse
import json
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


def translate(template_path: Path, overrides: dict[str, str], region: str = "us-east-1") -> dict[str, Any]:
    template = resolve_language_extensions(yaml_parse(template_path.read_text()), overrides)
    validator = SamTemplateValidator(
        template,
        BundledManagedPolicies(),
        region=region,
        parameter_overrides=overrides,
    )
    translated: dict[str, Any] = yaml_parse(validator.get_translated_template_if_valid())
    return translated


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("template", type=Path)
    parser.add_argument("parameters", nargs="?", default="{}", help="parameter overrides as a JSON object")
    parser.add_argument("--region", default="us-east-1")
    parser.add_argument("--output", type=Path, help="write the JSON here instead of printing it")
    args = parser.parse_args()
    text = json.dumps(translate(args.template, json.loads(args.parameters), args.region))
    if args.output:
        args.output.write_text(text)
    else:
        print(text)


if __name__ == "__main__":
    main()
