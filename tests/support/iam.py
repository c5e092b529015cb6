"""Least privilege, proven: a function's AWS calls made as its role, with moto enforcing IAM.

``RoleGuard.install(function)`` gives the in-process moto (``mock_aws``) the role template.yaml
gives ``function``, exactly as CloudFormation deploys it (after SAM's transform: its policy
templates, inline statements and the stack's managed policies it attaches, the stack's
resources resolved to their local ARNs), assumes it, and sends every AWS call of the process
with those credentials. moto's IAM access control (``INITIAL_NO_AUTH_ACTION_COUNT = 0``, as
``moto.core.enable_iam_authentication`` sets it) then checks each call's signature and key and
looks up the role's policies. A call they do not allow is ``AccessDenied``, as on AWS, and is
recorded: the ``state`` fixture fails the test with it, even when it happened in a background
task, whose failure is only logged.

moto's decision step knows no resource for DynamoDB or SES (it asks about ``*``, which no
statement scoped to a table or identity matches) and no SES condition key, and it names a batch
call's action after the call. ``decide`` fills that in as AWS does: the table ARN (each table of
a batch or transaction, with the action AWS checks for each transaction item), the sender's
identity ARN and ``ses:FromAddress``, ``sqs:SendMessage`` for ``SendMessageBatch``.

What allowed each call is recorded per ``Grant``: one action of one statement on one of its
resources. Every grant of a role must be used by some test (``Coverage``, conftest), and
tests/test_iam.py removes each in turn: a statement cannot hold an action, or a resource, that
no code calls.

The function's code runs on TestClient's threads; the test's own calls on the main thread
(setting up data, reading back results) are authenticated but not authorized.
"""

from __future__ import annotations

import json
import re
import threading
from dataclasses import dataclass, field
from typing import Any

import pytest
from moto import settings as moto_settings
from moto.core import DEFAULT_ACCOUNT_ID  # type: ignore[attr-defined]
from moto.core.authorization import ActionAuthenticatorMixin
from moto.iam.access_control import IAMPolicy, IAMPolicyStatement, IAMRequestBase, PermissionResult

from infra.template import Template, template
from shared import aws
from tests.support.sam import translated_template

REGION = "us-east-1"
ACCOUNT = DEFAULT_ACCOUNT_ID
AWS_MANAGED = "arn:aws:iam::aws:policy/"
BATCH_ACTIONS = {
    "sqs:SendMessageBatch": "sqs:SendMessage",
    "sqs:DeleteMessageBatch": "sqs:DeleteMessage",
    "sqs:ChangeMessageVisibilityBatch": "sqs:ChangeMessageVisibility",
}
TRANSACT_ITEM_ACTIONS = {
    "Put": "dynamodb:PutItem",
    "Update": "dynamodb:UpdateItem",
    "Delete": "dynamodb:DeleteItem",
    "ConditionCheck": "dynamodb:ConditionCheckItem",
    "Get": "dynamodb:GetItem",
}

Check = tuple[str, str, dict[str, str]]
"""(action, resource ARN, condition keys) that AWS authorizes for one call."""


class LocalArns:
    """Resolves the intrinsics of a translated policy to the local resources moto holds."""

    def __init__(self, stack: Template) -> None:
        self.stack = stack
        self.names = stack.local_names()

    def arn(self, logical_id: str) -> str:
        kind = self.stack.resources[logical_id]["Type"]
        name = self.names[logical_id]
        if kind == "AWS::DynamoDB::Table":
            return f"arn:aws:dynamodb:{REGION}:{ACCOUNT}:table/{name}"
        if kind == "AWS::SQS::Queue":
            return f"arn:aws:sqs:{REGION}:{ACCOUNT}:{name}"
        if kind == "AWS::S3::Bucket":
            return f"arn:aws:s3:::{name}"
        raise ValueError(f"no local ARN for {logical_id} ({kind})")

    def attribute(self, logical_id: str, attribute: str) -> str:
        if attribute == "Arn":
            return self.arn(logical_id)
        if attribute == "QueueName":
            return self.names[logical_id]
        raise ValueError(f"no local value for {logical_id}.{attribute}")

    def resolve(self, node: Any) -> Any:
        if isinstance(node, list):
            return [self.resolve(item) for item in node]
        if not isinstance(node, dict):
            return node
        if set(node) == {"Ref"}:
            return self.names[node["Ref"]]
        if set(node) == {"Fn::GetAtt"}:
            return self.attribute(*node["Fn::GetAtt"])
        if set(node) == {"Fn::Sub"}:
            text, variables = (node["Fn::Sub"], {}) if isinstance(node["Fn::Sub"], str) else node["Fn::Sub"]
            values = {"AWS::Partition": "aws", "AWS::Region": REGION, "AWS::AccountId": ACCOUNT}
            values.update({name: self.resolve(value) for name, value in variables.items()})

            def substitute(match: re.Match[str]) -> str:
                name = match.group(1)
                if name in values:
                    return str(values[name])
                logical_id, _, attribute = name.partition(".")
                return self.attribute(logical_id, attribute) if attribute else self.names[logical_id]

            return re.sub(r"\$\{([^}]+)\}", substitute, text)
        return {key: self.resolve(value) for key, value in node.items()}


def as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def short(resource: str) -> str:
    """``table/<name>``, ``<bucket>/uploads/*``, ``<queue>``, ``identity/*``: what tells resources apart."""
    return resource.rsplit(":", 1)[-1]


@dataclass(frozen=True)
class Statement:
    role: str
    policy: str
    index: int
    text: str = field(compare=False, default="")

    @classmethod
    def of(cls, role: str, policy: str, index: int, statement: dict[str, Any]) -> Statement:
        actions, resources = as_list(statement["Action"]), as_list(statement["Resource"])
        names = [short(resource) for resource in resources]
        return cls(role, policy, index, f"{statement.get('Sid', '')} {','.join(actions)} on {','.join(names)}".strip())

    def __str__(self) -> str:
        return f"{self.role}: {self.policy}: {self.text}"


@dataclass(frozen=True)
class Grant:
    """One action on one resource, as one statement of a role allows it: the unit that must be needed.

    A statement is too broad when any of its actions, or any of its resources, is one no
    behaviour calls: counting statements would let ``[GetItem, Scan]`` pass on one ``GetItem``.
    """

    role: str
    policy: str
    index: int
    action: str
    resource: str
    sid: str = field(compare=False, default="")

    @classmethod
    def each(cls, role: str, policy: str, index: int, statement: dict[str, Any]) -> list[Grant]:
        return [
            cls(role, policy, index, action, resource, statement.get("Sid", ""))
            for action in as_list(statement["Action"])
            for resource in as_list(statement["Resource"])
        ]

    def statement(self) -> Statement:
        return Statement(self.role, self.policy, self.index)

    def __str__(self) -> str:
        return f"{self.role}: {self.policy}: {self.sid} {self.action} on {short(self.resource)}".replace("  ", " ")


@dataclass(frozen=True)
class RolePolicies:
    """A function's role as deployed: ``{policy name: document}``, resolved to local ARNs."""

    function: str
    inline: dict[str, dict[str, Any]]
    managed: dict[str, dict[str, Any]]

    @classmethod
    def of(cls, function: str, translated: dict[str, Any] | None = None) -> RolePolicies:
        translated = translated or translated_template()
        resources = translated["Resources"]
        role = resources[f"{function}Role"]["Properties"]
        arns = LocalArns(template())
        inline = {
            policy["PolicyName"]: {"Version": "2012-10-17", **arns.resolve(policy["PolicyDocument"])}
            for policy in role.get("Policies", [])
        }
        managed = {}
        for arn in role["ManagedPolicyArns"]:
            if isinstance(arn, str):
                assert arn.startswith(AWS_MANAGED), arn  # logs and X-Ray: no test calls them
                continue
            managed[arn["Ref"]] = arns.resolve(resources[arn["Ref"]]["Properties"]["PolicyDocument"])
        return cls(function, inline, managed)

    def without(self, policy: str) -> RolePolicies:
        """The same role less one policy: what a user who forgot it would deploy."""
        assert policy in self.inline or policy in self.managed, policy
        return RolePolicies(
            self.function,
            {name: doc for name, doc in self.inline.items() if name != policy},
            {name: doc for name, doc in self.managed.items() if name != policy},
        )

    def without_grant(self, grant: Grant) -> RolePolicies:
        """The same role less one action on one resource; the rest of its statement stays."""
        assert grant in self.grants(), grant
        (original,) = [
            s
            for name, document in {**self.inline, **self.managed}.items()
            for i, s in enumerate(document["Statement"])
            if (name, i) == (grant.policy, grant.index)
        ]
        actions = [action for action in as_list(original["Action"]) if action != grant.action]
        resources = [resource for resource in as_list(original["Resource"]) if resource != grant.resource]
        rest = [{**original, "Action": actions}] if actions else []
        if resources:  # the removed action, still on the statement's other resources (Sids are unique per policy)
            sid = {"Sid": original["Sid"] + "Rest"} if "Sid" in original else {}
            rest.append({**original, **sid, "Action": grant.action, "Resource": resources})
        return self.replacing(grant.statement(), rest)

    def replacing(self, statement: Statement, replacement: list[dict[str, Any]]) -> RolePolicies:
        """The same role with ``replacement`` (maybe none) for one statement; a policy left empty goes."""

        def replace(policies: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
            kept = {}
            for name, document in policies.items():
                statements = [
                    new
                    for i, s in enumerate(document["Statement"])
                    for new in (replacement if (name, i) == (statement.policy, statement.index) else [s])
                ]
                if statements:
                    kept[name] = {**document, "Statement": statements}
            return kept

        return RolePolicies(self.function, replace(self.inline), replace(self.managed))

    def naming(self, text: str) -> str:
        """The one policy whose statements mention ``text`` (e.g. a table's local name)."""
        (name,) = [name for name, doc in {**self.inline, **self.managed}.items() if text in json.dumps(doc)]
        return name

    def statements(self) -> list[Statement]:
        return [
            Statement.of(self.function, name, index, statement)
            for name, document in {**self.inline, **self.managed}.items()
            for index, statement in enumerate(document["Statement"])
        ]

    def grants(self) -> list[Grant]:
        return [
            grant
            for name, document in {**self.inline, **self.managed}.items()
            for index, statement in enumerate(document["Statement"])
            for grant in Grant.each(self.function, name, index, statement)
        ]


def checks(iam_request: IAMRequestBase, resource: str) -> list[Check]:
    """What AWS authorizes for the call moto is handling."""
    action: str = iam_request._action
    service = action.partition(":")[0]
    if service == "dynamodb":
        return dynamodb_checks(action, json.loads(iam_request._body or b"{}"))
    if service == "ses":
        data = iam_request._data
        source = data.get("Source")
        source = source[0] if isinstance(source, list) else source
        if source:
            sender = re.sub(r".*<(.+)>.*", r"\1", source)
            return [(action, f"arn:aws:ses:{REGION}:{ACCOUNT}:identity/{sender}", {"ses:FromAddress": sender})]
    return [(BATCH_ACTIONS.get(action, action), resource, {})]


def dynamodb_checks(action: str, body: dict[str, Any]) -> list[Check]:
    def table(name: str, index: str | None = None) -> str:
        arn = f"arn:aws:dynamodb:{REGION}:{ACCOUNT}:table/{name}"
        return f"{arn}/index/{index}" if index else arn

    if action in ("dynamodb:TransactWriteItems", "dynamodb:TransactGetItems"):
        return [
            (TRANSACT_ITEM_ACTIONS[kind], table(operation["TableName"]), {})
            for item in body["TransactItems"]
            for kind, operation in item.items()
        ]
    if "RequestItems" in body:
        return [(action, table(name), {}) for name in body["RequestItems"]]
    if "TableName" in body:
        return [(action, table(body["TableName"], body.get("IndexName")), {})]
    return [(action, "*", {})]


@dataclass
class Denial:
    action: str
    resource: str

    def __str__(self) -> str:
        return f"{self.action} on {self.resource}"


@dataclass
class RoleGuard:
    """Who may call what in this test, and what was denied or used."""

    policies: RolePolicies | None = None
    denied: list[Denial] = field(default_factory=list)
    used: set[Grant] = field(default_factory=set)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def install(self, policies: RolePolicies, monkeypatch: pytest.MonkeyPatch) -> None:
        """Inside ``mock_aws``: create and assume the role, then switch IAM enforcement on."""
        iam, sts = aws.client("iam"), aws.client("sts")
        role = iam.create_role(
            RoleName=f"{policies.function}Role",
            AssumeRolePolicyDocument=json.dumps(
                {
                    "Version": "2012-10-17",
                    "Statement": [
                        {
                            "Effect": "Allow",
                            "Principal": {"Service": "lambda.amazonaws.com"},
                            "Action": "sts:AssumeRole",
                        }
                    ],
                }
            ),
        )["Role"]
        for name, document in policies.inline.items():
            iam.put_role_policy(RoleName=role["RoleName"], PolicyName=name, PolicyDocument=json.dumps(document))
        for name, document in policies.managed.items():
            arn = iam.create_policy(PolicyName=name, PolicyDocument=json.dumps(document))["Policy"]["Arn"]
            iam.attach_role_policy(RoleName=role["RoleName"], PolicyArn=arn)
        credentials = sts.assume_role(RoleArn=role["Arn"], RoleSessionName=policies.function)["Credentials"]
        self.policies = policies
        use_credentials(credentials["AccessKeyId"], credentials["SecretAccessKey"], credentials["SessionToken"])
        monkeypatch.setattr(moto_settings, "INITIAL_NO_AUTH_ACTION_COUNT", 0)
        monkeypatch.setattr(ActionAuthenticatorMixin, "request_count", 0)
        guard = self

        def check_action_permitted(iam_request: IAMRequestBase, resource: str) -> None:
            guard.authorize(iam_request, resource)

        monkeypatch.setattr(IAMRequestBase, "check_action_permitted", check_action_permitted)

    def uninstall(self) -> None:
        use_credentials("testing", "testing", "testing")

    def authorize(self, iam_request: IAMRequestBase, resource: str) -> None:
        if threading.current_thread() is threading.main_thread():
            return
        policies = iam_request._access_key.collect_policies()
        for action, arn, context in checks(iam_request, resource):
            if not self.decide(policies, action, arn, context):
                with self.lock:
                    self.denied.append(Denial(action, arn))
                iam_request._raise_access_denied()

    def decide(self, policies: list[Any], action: str, resource: str, context: dict[str, str]) -> bool:
        """moto's evaluation, statement by statement: an explicit deny wins, else any allow."""
        assert self.policies is not None
        documents = [IAMPolicy(policy)._policy_json for policy in policies]
        names = {
            json.dumps(document, sort_keys=True): name
            for name, document in {**self.policies.inline, **self.policies.managed}.items()
        }
        allowed_by = []
        for document in documents:
            name = names.get(json.dumps(document, sort_keys=True), "?")
            for index, statement in enumerate(document["Statement"]):
                result = IAMPolicyStatement(statement).is_action_permitted(
                    action, resource, incoming_condition_values=context
                )
                if result == PermissionResult.DENIED:
                    return False
                if result == PermissionResult.PERMITTED:
                    allowed_by += [
                        grant
                        for grant in Grant.each(self.policies.function, name, index, statement)
                        if IAMPolicyStatement(
                            {**statement, "Action": grant.action, "Resource": grant.resource}
                        ).is_action_permitted(action, resource, incoming_condition_values=context)
                        == PermissionResult.PERMITTED
                    ]
        with self.lock:
            self.used.update(allowed_by)
        return bool(allowed_by)

    def failure(self) -> str | None:
        if not self.denied or self.policies is None:
            return None
        calls = "; ".join(sorted({str(denial) for denial in self.denied}))
        return (
            f"AccessDenied: {self.policies.function}'s role in template.yaml does not allow {calls} "
            "(add the statement to its Policies)"
        )


def use_credentials(key: str, secret: str, token: str) -> None:
    """Every client of ``shared.aws`` signs with these from now on (the session and its models stay)."""
    aws._session()._session.set_credentials(key, secret, token)
    aws.client.cache_clear()
    aws.resource.cache_clear()


def function_roles(translated: dict[str, Any] | None = None) -> list[str]:
    """The functions of the template that have a role of their own (``UsersFunction``, ...)."""
    resources = (translated or translated_template())["Resources"]
    return [
        name
        for name, resource in resources.items()
        if resource["Type"] == "AWS::Lambda::Function" and f"{name}Role" in resources
    ]


class Coverage:
    """Across the run: which grants (action on resource) of the roles the tests ran as were ever used.

    Under pytest-xdist each worker counts its own tests and sends ``export()`` when its session
    ends; the controller ``merge``s them all before it judges (tests/support/workers.py).
    """

    def __init__(self) -> None:
        self.declared: set[Grant] = set()
        self.used: set[Grant] = set()

    def add(self, guard: RoleGuard) -> None:
        if guard.policies is not None:
            self.declared.update(guard.policies.grants())
            self.used.update(guard.used)

    def export(self) -> dict[str, list[list[str | int]]]:
        """Plain data a pytest-xdist worker sends to the controller, which judges the whole run."""

        def rows(grants: set[Grant]) -> list[list[str | int]]:
            return [[g.role, g.policy, g.index, g.action, g.resource, g.sid] for g in sorted(grants, key=str)]

        return {"declared": rows(self.declared), "used": rows(self.used)}

    def merge(self, exported: dict[str, list[list[str | int]]]) -> None:
        """Add what one worker's tests declared and used (``export``)."""

        def grants(rows: list[list[str | int]]) -> set[Grant]:
            return {Grant(str(r), str(p), int(i), str(a), str(res), str(sid)) for r, p, i, a, res, sid in rows}

        self.declared.update(grants(exported["declared"]))
        self.used.update(grants(exported["used"]))

    def declare_every_role(self, translated: dict[str, Any] | None = None) -> None:
        """Count every function's role, also one no test ran as: the whole suite must use each grant."""
        for function in function_roles(translated):
            self.declared.update(RolePolicies.of(function, translated).grants())

    def unused(self) -> list[Grant]:
        return sorted(self.declared - self.used, key=str)

    def failure(self) -> str | None:
        """Why the suite fails: a grant no behaviour needed is too broad, or its behaviour is untested."""
        unused = self.unused()
        if not unused:
            return None
        lines = "\n".join(f"  {grant}" for grant in unused)
        return (
            f"{len(unused)} IAM permission(s) of template.yaml no test exercised (action on resource): remove each "
            f"from its statement, or test the behaviour that needs it under the function's role "
            f"(tests/support/iam.py):\n{lines}"
        )


COVERAGE = Coverage()
