"""What the deploy rehearsal reads back from moto, against the template CloudFormation got.

``Stack`` is the translated template (plain CloudFormation, infra/sam-cli/translate.py) and
the stack moto made of it, read through the AWS APIs only (``DescribeStacks``,
``ListStackResources``, then each service's own ``Describe``/``Get`` calls). Each check returns
the problems it found as sentences naming the resource; none means it holds.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from botocore.exceptions import ClientError

from infra.template import Template

MOTO_CANNOT_CREATE = {
    "AWS::ApiGatewayV2::Api": "the HTTP API (its routes and JWT authorizer)",
    "AWS::ApiGatewayV2::Stage": "the HTTP API's stage (throttling, access logs)",
    "AWS::CloudWatch::Alarm": "the alarms",
    "AWS::S3::BucketPolicy": "the uploads bucket's TLS-only policy",
    "AWS::SNS::Subscription": "the alarm e-mail subscription",
}
"""The resource types moto's CloudFormation skips without an error (the stack still says
CREATE_COMPLETE). A resource of any other type that was not created fails the rehearsal."""

MOTO_DOES_NOT_DELETE = {
    "AWS::IAM::ManagedPolicy": "the stack's managed policies",
    "AWS::Lambda::LayerVersion": "the layer versions",
}
"""The resource types moto creates but leaves behind when it deletes a stack; CloudFormation
deletes them. moto 5.2.5's ``ManagedPolicy`` (moto/iam/models.py) and ``LayerVersion``
(moto/awslambda/models.py) define neither ``delete`` nor ``delete_from_cloudformation_json``,
and its stack deletion (``ResourceMap.delete``, moto/cloudformation/parsing.py) skips a resource
whose class has no deletion. After ``sam delete`` the rehearsal allows exactly this stack's
resources of these types to remain, then deletes them as CloudFormation would
(``Stack.delete_left_by_moto``) and checks that nothing but the ``Retain`` resources is left."""

PSEUDO = re.compile(r"^AWS::")
SUB_NAME = re.compile(r"\$\{([^!}][^}]*)\}")
VARIABLE_KINDS = {"_TABLE": ("Table", "AWS::DynamoDB::Table"), "_BUCKET": ("Bucket", "AWS::S3::Bucket")}
VARIABLE_KINDS["_QUEUE_URL"] = ("Queue", "AWS::SQS::Queue")


def references(node: Any) -> Iterator[str]:
    """The logical ids and parameters ``node`` refers to (``Ref``, ``Fn::GetAtt``, ``Fn::Sub``)."""
    if isinstance(node, list):
        for item in node:
            yield from references(item)
    elif isinstance(node, dict):
        if set(node) == {"Ref"} and isinstance(node["Ref"], str):
            yield node["Ref"]
            return
        if set(node) == {"Fn::GetAtt"}:
            target = node["Fn::GetAtt"]
            yield (target.split(".", 1)[0] if isinstance(target, str) else target[0])
            return
        if set(node) == {"Fn::Sub"}:
            text, variables = (node["Fn::Sub"], {}) if isinstance(node["Fn::Sub"], str) else node["Fn::Sub"]
            for name in SUB_NAME.findall(text):
                name = name.split(".", 1)[0]
                if name not in variables:
                    yield name
            yield from references(list(variables.values()))
            return
        for value in node.values():
            yield from references(value)


def scalars_as_text(value: Any) -> Any:
    """``{"MaximumConcurrency": "2"}`` and ``{"MaximumConcurrency": 2}`` alike: a parameter's value is
    text in the template, and CloudFormation converts it to the property's type."""
    if isinstance(value, dict):
        return {key: scalars_as_text(item) for key, item in value.items()}
    if isinstance(value, list):
        return [scalars_as_text(item) for item in value]
    return str(value).lower() if isinstance(value, bool) else str(value)


def designated(variable: str) -> tuple[str, str] | None:
    """``USERS_TABLE`` -> (``UsersTable``, its type): the resource a variable's name says it names."""
    for suffix, (kind, resource_type) in VARIABLE_KINDS.items():
        if variable.endswith(suffix):
            stem = variable.removesuffix(suffix)
            return "".join(part.capitalize() for part in stem.split("_")) + kind, resource_type
    return None


def holds(condition: Any, conditions: dict[str, Any]) -> bool:
    """A condition of the translated template, whose parameters are already values."""
    if isinstance(condition, bool):
        return condition
    (function, args), *_ = condition.items()
    if function == "Condition":
        return holds(conditions[args], conditions)
    if function == "Fn::Equals":
        return bool(args[0] == args[1])
    if function == "Fn::Not":
        return not holds(args[0], conditions)
    if function == "Fn::And":
        return all(holds(arg, conditions) for arg in args)
    if function == "Fn::Or":
        return any(holds(arg, conditions) for arg in args)
    raise ValueError(f"unsupported condition {condition}")


def unresolved_references(template: dict[str, Any]) -> list[str]:
    """What CloudFormation rejects when the change set is created ("Unresolved resource
    dependencies"), and moto's does not: a reference to nothing the template declares."""
    declared = set(template.get("Resources", {})) | set(template.get("Parameters", {}))
    problems = []
    for section in ("Resources", "Outputs"):
        for name, body in template.get(section, {}).items():
            for target in sorted(set(references(body))):
                if target not in declared and not PSEUDO.match(target):
                    kind = "resource" if section == "Resources" else "output"
                    problems.append(f"{kind} {name} refers to {target}, which the template does not declare")
    return problems


@dataclass
class Stack:
    """The stack moto created from ``template``, read back through ``client(service)``."""

    name: str
    template: dict[str, Any]
    client: Callable[[str], Any]
    physical: dict[str, str] = field(default_factory=dict)
    outputs: dict[str, str | None] = field(default_factory=dict)

    @property
    def resources(self) -> dict[str, dict[str, Any]]:
        return Template(self.template).resources

    def of_type(self, resource_type: str) -> dict[str, dict[str, Any]]:
        """Like ``Template.of_type``, for the resources moto created."""
        created = Template(self.template).of_type(resource_type)
        return {name: properties for name, properties in created.items() if name in self.physical}

    def expected(self) -> dict[str, str]:
        """``{logical id: type}`` of the resources CloudFormation creates: those whose condition holds."""
        conditions = self.template.get("Conditions", {})
        return {
            name: resource["Type"]
            for name, resource in self.resources.items()
            if "Condition" not in resource or holds(conditions[resource["Condition"]], conditions)
        }

    def read(self) -> list[str]:
        cloudformation = self.client("cloudformation")
        (stack,) = cloudformation.describe_stacks(StackName=self.name)["Stacks"]
        if stack["StackStatus"] != "CREATE_COMPLETE":
            return [f"stack {self.name} is {stack['StackStatus']}, not CREATE_COMPLETE"]
        self.outputs = {output["OutputKey"]: output.get("OutputValue") for output in stack.get("Outputs", [])}
        paginator = cloudformation.get_paginator("list_stack_resources")
        for page in paginator.paginate(StackName=self.name):
            for summary in page["StackResourceSummaries"]:
                if summary["LogicalResourceId"]:  # moto lists a resource it skipped with no id
                    self.physical[summary["LogicalResourceId"]] = summary["PhysicalResourceId"]
        return []

    def skipped(self) -> dict[str, str]:
        return {name: kind for name, kind in self.expected().items() if name not in self.physical}

    def check_created(self) -> list[str]:
        problems = [
            f"{name} ({kind}) was not created, and {kind} is not one of the types moto cannot create"
            for name, kind in self.skipped().items()
            if kind not in MOTO_CANNOT_CREATE
        ]
        problems += [
            f"{name} ({kind}) was created: moto now creates {kind}, so take it off MOTO_CANNOT_CREATE"
            for name, kind in self.expected().items()
            if name in self.physical and kind in MOTO_CANNOT_CREATE
        ]
        return problems

    def check_outputs(self) -> list[str]:
        """Every output that depends on no skipped resource has a value with nothing left unresolved."""
        problems = []
        skipped = set(self.skipped())
        for key, output in self.template.get("Outputs", {}).items():
            if skipped & set(references(output["Value"])):
                continue
            value = self.outputs.get(key)
            if not value or "None" in value or "${" in value:
                problems.append(f"output {key} is not resolved: {value!r}")
            elif isinstance(output["Value"], dict) and set(output["Value"]) == {"Ref"}:
                target = output["Value"]["Ref"]
                if value != self.physical.get(target):
                    problems.append(f"output {key} is {value!r}, not {target} ({self.physical.get(target)})")
        return problems

    def unresolvable_outputs(self) -> list[str]:
        skipped = set(self.skipped())
        outputs = self.template.get("Outputs", {})
        return [key for key, output in outputs.items() if skipped & set(references(output["Value"]))]

    def check_function_environments(self) -> list[str]:
        """Each function's variables as Lambda holds them: ``USERS_TABLE`` names the stack's UsersTable."""
        problems = []
        lam = self.client("lambda")
        for function, properties in self.of_type("AWS::Lambda::Function").items():
            configuration = lam.get_function_configuration(FunctionName=self.physical[function])
            variables = configuration.get("Environment", {}).get("Variables", {})
            declared = properties.get("Environment", {}).get("Variables", {})
            for variable in declared:
                value = str(variables.get(variable))
                target = designated(variable)
                if target:
                    logical_id, resource_type = target
                    if self.resources.get(logical_id, {}).get("Type") != resource_type:
                        problems.append(f"{function}: {variable} names no {resource_type} {logical_id} in the template")
                    elif value != self.physical.get(logical_id):
                        problems.append(
                            f"{function}: {variable} is {value!r}, not {logical_id} ({self.physical.get(logical_id)})"
                        )
                    elif not self.exists(resource_type, value):
                        problems.append(f"{function}: {variable} names {value!r}, which does not exist")
                elif value in ("None", "") or ("{" in value and "Ref" in value):
                    problems.append(f"{function}: {variable} is not resolved: {value!r}")
                elif variable == "POWERTOOLS_METRICS_NAMESPACE" and value != self.name:
                    problems.append(f"{function}: {variable} is {value!r}, not the stack name {self.name}")
        return problems

    def queue_arn(self, logical_id: str) -> str:
        attributes = self.client("sqs").get_queue_attributes(
            QueueUrl=self.physical[logical_id], AttributeNames=["QueueArn"]
        )["Attributes"]
        return str(attributes["QueueArn"])

    def check_event_source_mappings(self) -> list[str]:
        problems = []
        functions = self.of_type("AWS::Lambda::Function")
        for mapping, properties in self.of_type("AWS::Lambda::EventSourceMapping").items():
            found = self.client("lambda").get_event_source_mapping(UUID=self.physical[mapping])
            (function,) = set(references(properties["FunctionName"])) & set(functions)
            (queue,) = set(references(properties["EventSourceArn"]))
            if found["State"] != "Enabled":
                problems.append(f"{mapping} is {found['State']}, not Enabled")
            if "ReportBatchItemFailures" not in found.get("FunctionResponseTypes", []):
                problems.append(f"{mapping} does not report batch item failures (FunctionResponseTypes)")
            if not found["FunctionArn"].endswith(f":function:{self.physical[function]}"):
                problems.append(f"{mapping} invokes {found['FunctionArn']}, not {function}")
            if found["EventSourceArn"] != self.queue_arn(queue):
                problems.append(f"{mapping} reads {found['EventSourceArn']}, not {queue}")
            for key in ("BatchSize", "MaximumBatchingWindowInSeconds", "ScalingConfig"):
                if key in properties and scalars_as_text(found.get(key)) != scalars_as_text(properties[key]):
                    problems.append(f"{mapping}: {key} is {found.get(key)}, the template says {properties[key]}")
        return problems

    def check_queues(self) -> list[str]:
        problems = []
        for queue, properties in self.of_type("AWS::SQS::Queue").items():
            attributes = self.client("sqs").get_queue_attributes(QueueUrl=self.physical[queue], AttributeNames=["All"])[
                "Attributes"
            ]
            for key in ("VisibilityTimeout", "MessageRetentionPeriod", "SqsManagedSseEnabled"):
                if key in properties and attributes.get(key) != scalars_as_text(properties[key]):
                    problems.append(f"{queue}: {key} is {attributes.get(key)}, the template says {properties[key]}")
            if "RedrivePolicy" in properties:
                declared = properties["RedrivePolicy"]
                (dead_letter,) = set(references(declared["deadLetterTargetArn"]))
                found = json.loads(attributes.get("RedrivePolicy", "{}"))
                expected = {
                    "deadLetterTargetArn": self.queue_arn(dead_letter),
                    "maxReceiveCount": declared["maxReceiveCount"],
                }
                if scalars_as_text({key: found.get(key) for key in expected}) != scalars_as_text(expected):
                    problems.append(f"{queue}: redrive policy is {found}, the template says {expected}")
        return problems

    def check_log_groups(self) -> list[str]:
        problems = []
        logs = self.client("logs")
        for group, properties in self.of_type("AWS::Logs::LogGroup").items():
            name = self.physical[group]
            found = [
                g for g in logs.describe_log_groups(logGroupNamePrefix=name)["logGroups"] if g["logGroupName"] == name
            ]
            if not found:
                problems.append(f"{group}: no log group {name}")
                continue
            if scalars_as_text(found[0].get("retentionInDays")) != scalars_as_text(properties["RetentionInDays"]):
                problems.append(
                    f"{group}: retention is {found[0].get('retentionInDays')} days, "
                    f"the template says {properties['RetentionInDays']}"
                )
            if not name.startswith(f"/{self.name}/"):
                problems.append(f"{group} is named {name}, not under /{self.name}/ (AWS::StackName)")
        return problems

    def retained(self) -> set[str]:
        return {
            name
            for name in self.expected()
            if name in self.physical and self.resources[name].get("DeletionPolicy") == "Retain"
        }

    def left_by_moto(self) -> dict[str, str]:
        """``{logical id: type}``: this stack's resources moto left after deleting it (MOTO_DOES_NOT_DELETE)."""
        retained = self.retained()
        return {
            name: kind
            for name, kind in self.expected().items()
            if kind in MOTO_DOES_NOT_DELETE
            and name in self.physical
            and name not in retained
            and self.exists(kind, self.physical[name], name)
        }

    def delete_left_by_moto(self) -> list[str]:
        """Delete what moto left of this stack, as CloudFormation deletes it with the stack."""
        problems = []
        for name, kind in sorted(self.left_by_moto().items()):
            try:
                DELETIONS[kind](self, self.physical[name], name)
            except ClientError as error:
                problems.append(f"{name} ({kind}) could not be deleted: {error}")
        return problems

    def check_nothing_else_left(self) -> list[str]:
        """No managed policy or layer at all in the account (moto's, which only this stack used):
        none the stack made under a name its resource list does not show."""
        policies = self.client("iam").list_policies(Scope="Local")["Policies"]
        layers = self.client("lambda").list_layers()["Layers"]
        return [f"managed policy {policy['PolicyName']} is still there" for policy in policies] + [
            f"layer {layer['LayerName']} is still there" for layer in layers
        ]

    def check_deleted(self, *, moto_leaves: bool = True) -> list[str]:
        """After ``sam delete``: exactly the ``Retain`` resources are left, and (``moto_leaves``)
        this stack's resources of the types moto does not delete."""
        problems = []
        stacks = self.client("cloudformation").list_stacks()["StackSummaries"]
        if any(s["StackName"] == self.name and s["StackStatus"] != "DELETE_COMPLETE" for s in stacks):
            problems.append(f"stack {self.name} is still there")
        retained = self.retained()
        for name, kind in self.expected().items():
            if name not in self.physical:
                continue
            left = self.exists(kind, self.physical[name], name)
            if name in retained and not left:
                problems.append(f"{name} ({kind}) has DeletionPolicy Retain, yet it was deleted with the stack")
            if name not in retained and left and not (moto_leaves and kind in MOTO_DOES_NOT_DELETE):
                problems.append(f"{name} ({kind}) is still there after the stack was deleted")
            if name not in retained and not left and moto_leaves and kind in MOTO_DOES_NOT_DELETE:
                problems.append(
                    f"{name} ({kind}) was deleted: moto now deletes it, take {kind} off MOTO_DOES_NOT_DELETE"
                )
        return problems

    def exists(self, kind: str, physical_id: str, logical_id: str = "") -> bool:
        probe = PROBES.get(kind)
        if probe is None:
            raise LookupError(f"no probe for {kind} ({logical_id}): add one to PROBES in infra/deploy_checks.py")
        try:
            return probe(self, physical_id, logical_id)
        except ClientError as error:
            if error.response["Error"]["Code"] in NOT_FOUND or "does not exist" in str(error):
                return False
            raise


NOT_FOUND = {
    "ResourceNotFoundException",
    "NoSuchEntity",
    "NoSuchBucket",
    "404",
    "AWS.SimpleQueueService.NonExistentQueue",
    "QueueDoesNotExist",
    "NotFound",
    "ResourceNotFound",
}


def _layer_exists(stack: Stack, physical_id: str, logical_id: str) -> bool:
    return bool(_stack_layers(stack, logical_id))


def _permission_exists(stack: Stack, physical_id: str, logical_id: str) -> bool:
    # moto gives a permission no physical id: it lives in its function's resource policy.
    (function,) = set(references(stack.resources[logical_id]["Properties"]["FunctionName"]))
    policy = stack.client("lambda").get_policy(FunctionName=stack.physical[function])["Policy"]
    return bool(json.loads(policy)["Statement"])


def _dashboard_exists(stack: Stack, physical_id: str, logical_id: str) -> bool:
    entries = stack.client("cloudwatch").list_dashboards(DashboardNamePrefix=physical_id)["DashboardEntries"]
    return any(entry["DashboardName"] == physical_id for entry in entries)


def _log_group_exists(stack: Stack, physical_id: str, logical_id: str) -> bool:
    groups = stack.client("logs").describe_log_groups(logGroupNamePrefix=physical_id)["logGroups"]
    return any(group["logGroupName"] == physical_id for group in groups)


def _topic_exists(stack: Stack, physical_id: str, logical_id: str) -> bool:
    stack.client("sns").get_topic_attributes(TopicArn=physical_id)
    return True


def _call(service: str, method: str, key: str) -> Callable[[Stack, str, str], bool]:
    def probe(stack: Stack, physical_id: str, logical_id: str) -> bool:
        getattr(stack.client(service), method)(**{key: physical_id})
        return True

    return probe


def _managed_policy_exists(stack: Stack, physical_id: str, logical_id: str) -> bool:
    stack.client("iam").get_policy(PolicyArn=physical_id)
    return True


def _stack_layers(stack: Stack, logical_id: str) -> list[str]:
    # moto gives a layer version no physical id; its layer is named after the stack and logical id.
    layers = stack.client("lambda").list_layers()["Layers"]
    return [layer["LayerName"] for layer in layers if layer["LayerName"].startswith(f"{stack.name}-{logical_id}-")]


def _delete_managed_policy(stack: Stack, physical_id: str, logical_id: str) -> None:
    stack.client("iam").delete_policy(PolicyArn=physical_id)


def _delete_layer_versions(stack: Stack, physical_id: str, logical_id: str) -> None:
    client = stack.client("lambda")
    for layer in _stack_layers(stack, logical_id):
        for version in client.list_layer_versions(LayerName=layer)["LayerVersions"]:
            client.delete_layer_version(LayerName=layer, VersionNumber=version["Version"])


DELETIONS: dict[str, Callable[[Stack, str, str], None]] = {
    "AWS::IAM::ManagedPolicy": _delete_managed_policy,
    "AWS::Lambda::LayerVersion": _delete_layer_versions,
}
"""What CloudFormation does, per type of MOTO_DOES_NOT_DELETE, when it deletes the stack."""


PROBES: dict[str, Callable[[Stack, str, str], bool]] = {
    "AWS::DynamoDB::Table": _call("dynamodb", "describe_table", "TableName"),
    "AWS::S3::Bucket": _call("s3", "head_bucket", "Bucket"),
    "AWS::SQS::Queue": _call("sqs", "get_queue_attributes", "QueueUrl"),
    "AWS::Lambda::Function": _call("lambda", "get_function", "FunctionName"),
    "AWS::Lambda::EventSourceMapping": _call("lambda", "get_event_source_mapping", "UUID"),
    "AWS::IAM::Role": _call("iam", "get_role", "RoleName"),
    "AWS::IAM::ManagedPolicy": _managed_policy_exists,
    "AWS::Lambda::LayerVersion": _layer_exists,
    "AWS::Lambda::Permission": _permission_exists,
    "AWS::CloudWatch::Dashboard": _dashboard_exists,
    "AWS::Logs::LogGroup": _log_group_exists,
    "AWS::SNS::Topic": _topic_exists,
}
"""How to tell whether a created resource is still there, per type: ``sam delete``'s check."""
