"""template.yaml: valid for SAM and cfn-lint, one function per folder, least privilege, abuse limits."""

from __future__ import annotations

import importlib
import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from infra.sam_build import layers_for
from tests.support.sam import (
    ROOT,
    TEMPLATE,
    FunctionSpec,
    function_folders,
    functions,
    http_functions,
    load_template,
    logical_id,
    run_sam,
    translate,
    translated_template,
)

# AWS's own policies that SAM attaches to every function role (logs, X-Ray tracing).
EXPECTED_MANAGED_POLICIES = {"AWSLambdaBasicExecutionRole", "AWSXrayWriteOnlyAccess"}


@pytest.fixture(scope="module")
def template() -> dict[str, Any]:
    return load_template()


@pytest.fixture(scope="module")
def specs(template: dict[str, Any]) -> dict[str, FunctionSpec]:
    return functions(template)


@pytest.fixture(scope="module")
def translated() -> dict[str, Any]:
    return translated_template()


def test_sam_validate_reports_nothing(tmp_path: Path) -> None:
    """`sam validate` (the SAM translator, with samconfig.toml's language extensions) and `--lint`."""
    for args in (["validate", "--region", "us-east-1"], ["validate", "--lint"]):
        result = run_sam(args, tmp_path / "sam", timeout=180)
        assert result.returncode == 0, result.stdout + result.stderr
        assert result.stdout.strip().startswith(f"{TEMPLATE} is a valid SAM Template"), result.stdout
        assert "warn" not in (result.stdout + result.stderr).lower()


def test_cfn_lint_reports_nothing() -> None:
    result = subprocess.run(
        [str(ROOT / ".venv" / "bin" / "cfn-lint"), str(TEMPLATE)], cwd=ROOT, capture_output=True, text=True
    )
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")


def test_every_function_folder_has_its_function(specs: dict[str, FunctionSpec]) -> None:
    """Lambda's handler is in the function's folder and is the one its app.py exposes.

    Usually ``functions/<name>/app.handler``; the worker's is ``sqs.handler``, which
    app.py imports, so that its cold start skips FastAPI.
    """
    assert sorted(specs) == sorted(logical_id(name) for name in function_folders())
    for name in function_folders():
        spec = specs[logical_id(name)]
        module, _, attribute = spec.handler.replace("/", ".").rpartition(".")
        assert (module.rpartition(".")[0], attribute) == (f"functions.{name}", "handler"), spec.handler
        app_module = importlib.import_module(f"functions.{name}.app")
        assert importlib.import_module(module).handler is app_module.handler
        assert spec.properties["CodeUri"] == "."
        assert spec.properties["Metadata"] == {"BuildMethod": "makefile"}
        assert spec.properties["Runtime"] == "python3.12"
        assert spec.environment["SERVICE_NAME"] == name


def test_http_functions_are_routed_under_their_own_prefix(specs: dict[str, FunctionSpec]) -> None:
    """`/<name>/...` reaches functions/<name>, which serves it with root_path /<name>."""
    routed = {name for name in function_folders() if specs[logical_id(name)].http_paths()}
    assert routed >= {"notifications", "users", "uploads", "items"}
    for name in routed:
        spec = specs[logical_id(name)]
        assert spec.http_paths() == [f"/{name}/{{proxy+}}"]
        assert spec.environment["API_ROOT_PATH"] == f"/{name}"
    for name in set(function_folders()) - routed:
        assert "API_ROOT_PATH" not in specs[logical_id(name)].environment


def test_each_function_gets_the_layers_its_imports_need(specs: dict[str, FunctionSpec]) -> None:
    """Pillow only where the code imports it; a function importing it without the layer would fail."""
    for name in function_folders():
        assert set(specs[logical_id(name)].layers) == {f"{layer}Layer" for layer in layers_for(name)}, name
    assert "PillowLayer" not in specs["NotificationsFunction"].layers
    assert "PillowLayer" in specs["UploadsFunction"].layers


def test_the_worker_drains_the_queue_with_partial_batch_responses(template: dict[str, Any]) -> None:
    resources = template["Resources"]
    mappings = [r for r in resources.values() if r["Type"] == "AWS::Lambda::EventSourceMapping"]
    assert len(mappings) == 1
    mapping = mappings[0]["Properties"]
    assert mapping["FunctionName"] == {"Ref": "WorkerFunction"}
    assert mapping["EventSourceArn"] == {"Fn::GetAtt": ["TaskQueue", "Arn"]}
    assert mapping["FunctionResponseTypes"] == ["ReportBatchItemFailures"]
    redrive = resources["TaskQueue"]["Properties"]["RedrivePolicy"]
    assert redrive == {
        "deadLetterTargetArn": {"Fn::GetAtt": ["TaskDeadLetterQueue", "Arn"]},
        "maxReceiveCount": {"Ref": "MaxReceiveCount"},
    }
    # Lambda's advice: the visibility timeout is at least six times the worker's timeout.
    assert (
        resources["TaskQueue"]["Properties"]["VisibilityTimeout"]
        >= 6 * resources["WorkerFunction"]["Properties"]["Timeout"]
    )


def test_idempotency_table_has_the_keys_powertools_expects(template: dict[str, Any]) -> None:
    table = template["Resources"]["IdempotencyTable"]["Properties"]
    assert table["KeySchema"] == [{"AttributeName": "id", "KeyType": "HASH"}]
    assert table["TimeToLiveSpecification"] == {"AttributeName": "expiration", "Enabled": True}
    assert table["BillingMode"] == "PAY_PER_REQUEST"


def test_the_bucket_is_private_and_encrypted(template: dict[str, Any]) -> None:
    bucket = template["Resources"]["UploadsBucket"]["Properties"]
    assert all(bucket["PublicAccessBlockConfiguration"].values())
    assert len(bucket["PublicAccessBlockConfiguration"]) == 4
    rule = bucket["BucketEncryption"]["ServerSideEncryptionConfiguration"][0]
    assert rule["ServerSideEncryptionByDefault"]["SSEAlgorithm"] in ("AES256", "aws:kms")


def _statements(role: dict[str, Any], resources: dict[str, Any]) -> list[dict[str, Any]]:
    """A role's inline statements and those of the stack's managed policies it attaches."""
    documents = [policy["PolicyDocument"] for policy in role["Properties"].get("Policies", [])]
    for arn in role["Properties"]["ManagedPolicyArns"]:
        if isinstance(arn, dict):
            documents.append(resources[arn["Ref"]]["Properties"]["PolicyDocument"])
    return [statement for document in documents for statement in document["Statement"]]


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def _is_own_resource(resource: Any) -> bool:
    """A reference to one of the stack's resources, or an ARN in the stack's own account."""
    if not isinstance(resource, dict):
        return False
    if "Fn::Sub" in resource:
        text = resource["Fn::Sub"][0] if isinstance(resource["Fn::Sub"], list) else resource["Fn::Sub"]
        return "${AWS::AccountId}" in text or text.startswith("${")
    return set(resource) <= {"Ref", "Fn::GetAtt"}


def test_roles_allow_no_wildcard_action_and_only_own_resources(translated: dict[str, Any]) -> None:
    roles = {name: r for name, r in translated["Resources"].items() if r["Type"] == "AWS::IAM::Role"}
    assert sorted(roles) == sorted(f"{logical_id(name)}Role" for name in function_folders())
    resources = translated["Resources"]
    for name, role in roles.items():
        arns = role["Properties"]["ManagedPolicyArns"]
        managed = {arn.rsplit("/", 1)[-1] for arn in arns if isinstance(arn, str)}
        assert managed == EXPECTED_MANAGED_POLICIES, name
        # Any other managed policy is one of the stack's own, checked like inline statements.
        for arn in arns:
            assert isinstance(arn, str) or resources[arn["Ref"]]["Type"] == "AWS::IAM::ManagedPolicy", arn
        for statement in _statements(role, resources):
            assert statement["Effect"] == "Allow"
            for action in _as_list(statement["Action"]):
                assert "*" not in action, f"{name} allows {action}"
            for resource in _as_list(statement["Resource"]):
                assert _is_own_resource(resource), f"{name}: {statement}"


def test_ses_sending_is_limited_to_the_configured_sender(template: dict[str, Any], translated: dict[str, Any]) -> None:
    """Every role that may send e-mail, however it got the statement, only from MailSender."""
    ses = [
        statement
        for resource in translated["Resources"].values()
        if resource["Type"] == "AWS::IAM::Role"
        for statement in _statements(resource, translated["Resources"])
        if any(action.startswith("ses:") for action in _as_list(statement["Action"]))
    ]
    assert ses
    for statement in ses:
        assert _as_list(statement["Action"]) == ["ses:SendEmail"]
        sender = template["Parameters"]["MailSender"]["Default"]
        assert statement["Condition"] == {"StringEquals": {"ses:FromAddress": sender}}


def test_the_api_is_throttled_by_parameters(template: dict[str, Any], translated: dict[str, Any]) -> None:
    settings = template["Resources"]["HttpApi"]["Properties"]["DefaultRouteSettings"]
    assert settings == {
        "ThrottlingBurstLimit": {"Ref": "ThrottlingBurstLimit"},
        "ThrottlingRateLimit": {"Ref": "ThrottlingRateLimit"},
    }
    stage = translated["Resources"]["HttpApiApiGatewayDefaultStage"]["Properties"]["DefaultRouteSettings"]
    assert stage == {"ThrottlingBurstLimit": 50, "ThrottlingRateLimit": 100}


def _route_security(translated: dict[str, Any]) -> dict[str, Any]:
    body = translated["Resources"]["HttpApi"]["Properties"]["Body"]
    return {
        f"{method} {path}": operation.get("security")
        for path, operations in body["paths"].items()
        for method, operation in operations.items()
    }


def test_routes_are_open_unless_the_jwt_authorizer_is_switched_on(translated: dict[str, Any]) -> None:
    security = _route_security(translated)
    assert sorted(security) == sorted(f"x-amazon-apigateway-any-method /{name}/{{proxy+}}" for name in http_functions())
    assert set(security.values()) == {None}
    assert "securitySchemes" not in translated["Resources"]["HttpApi"]["Properties"]["Body"].get("components", {})


def test_enable_jwt_auth_puts_the_authorizer_on_every_route() -> None:
    issuer = "https://cognito-idp.eu-west-1.amazonaws.com/eu-west-1_example"
    translated = translate({"EnableJwtAuth": "true", "JwtIssuer": issuer, "JwtAudience": "client-a,client-b"})
    assert set(map(json.dumps, _route_security(translated).values())) == {json.dumps([{"JwtAuthorizer": []}])}
    scheme = translated["Resources"]["HttpApi"]["Properties"]["Body"]["components"]["securitySchemes"]
    authorizer = scheme["JwtAuthorizer"]["x-amazon-apigateway-authorizer"]
    assert authorizer["type"] == "jwt"
    assert authorizer["jwtConfiguration"] == {"issuer": issuer, "audience": ["client-a", "client-b"]}
    assert authorizer["identitySource"] == "$request.header.Authorization"


def test_jwt_auth_without_issuer_is_refused_before_deployment(template: dict[str, Any]) -> None:
    rule = template["Rules"]["JwtNeedsIssuerAndAudience"]
    assert rule["RuleCondition"] == {"Fn::Equals": [{"Ref": "EnableJwtAuth"}, "true"]}
    asserted = json.dumps(rule["Assertions"])
    assert '"Ref": "JwtIssuer"' in asserted
    assert '"Ref": "JwtAudience"' in asserted


def test_logs_are_kept_for_the_retention_parameter(template: dict[str, Any], specs: dict[str, FunctionSpec]) -> None:
    groups = {name: r for name, r in template["Resources"].items() if r["Type"] == "AWS::Logs::LogGroup"}
    assert groups
    for group in groups.values():
        assert group["Properties"]["RetentionInDays"] == {"Ref": "LogRetentionDays"}
    for spec in specs.values():
        assert spec.properties["LoggingConfig"]["LogGroup"] == {"Ref": "FunctionLogGroup"}


def test_outputs_give_the_api_and_any_docs_url_points_at_its_function(template: dict[str, Any]) -> None:
    """A ``<Name>DocsUrl`` output is optional; one that exists names a routed function and its docs."""
    outputs = template["Outputs"]
    assert "ApiUrl" in outputs
    docs_outputs = {key.removesuffix("DocsUrl"): output for key, output in outputs.items() if key.endswith("DocsUrl")}
    routed = {logical_id(name).removesuffix("Function"): name for name in http_functions(template)}
    assert set(docs_outputs) <= set(routed), (
        f"DocsUrl outputs without a routed function: {set(docs_outputs) - set(routed)}"
    )
    for prefix, output in docs_outputs.items():
        assert output["Value"] == {
            "Fn::Sub": f"https://${{HttpApi}}.execute-api.${{AWS::Region}}.${{AWS::URLSuffix}}/{routed[prefix]}/docs"
        }


def test_a_function_behind_its_api_prefix_serves_its_routes_and_docs(monkeypatch: pytest.MonkeyPatch) -> None:
    """What the HTTP API sends (/users/users/...) reaches the app's /users/...; docs link under /users."""
    from fastapi.testclient import TestClient

    from shared.app import create_app
    from shared.settings import get_settings

    monkeypatch.setenv("API_ROOT_PATH", "/users")
    get_settings.cache_clear()
    app = create_app("users-probe")

    @app.get("/users/{user_id}")
    def get_user(user_id: str) -> dict[str, str]:
        return {"id": user_id}

    client = TestClient(app)
    assert client.get("/users/users/abc").json() == {"id": "abc"}
    assert client.get("/users/health").json() == {"status": "ok", "service": "users-probe"}
    assert "url: '/users/openapi.json'" in client.get("/users/docs").text
    assert client.get("/users/openapi.json").json()["servers"] == [{"url": "/users"}]
    # An event with the app's own path (a direct invoke, a Function URL) still works.
    assert client.get("/health").json()["status"] == "ok"


def test_shared_statements_are_declared_once_and_attached_by_reference(template: dict[str, Any]) -> None:
    """No statement is pasted into two functions: a capability several share is a managed policy."""
    seen: dict[str, str] = {}
    for name, resource in template["Resources"].items():
        if resource["Type"] != "AWS::Serverless::Function":
            continue
        for policy in resource["Properties"].get("Policies", []):
            for statement in policy.get("Statement", []) if isinstance(policy, dict) else []:
                key = json.dumps(statement, sort_keys=True)
                assert key not in seen, (
                    f"{name} repeats {seen.get(key)}'s statement {statement.get('Sid')}: share a managed policy"
                )
                seen[key] = name
    users = template["Resources"]["UsersFunction"]["Properties"]["Policies"]
    assert {"Ref": "EnqueueDurableTasksPolicy"} in users
    assert {"Ref": "SendMailPolicy"} in users


# --- observability: alarms, topic, dashboard (names from shared/metrics/names.py) -----------

STACK_NAMESPACE = {"Ref": "AWS::StackName"}


def _alarms(translated: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {
        name: resource["Properties"]
        for name, resource in translated["Resources"].items()
        if resource["Type"] == "AWS::CloudWatch::Alarm"
    }


def _metric_stats(alarm: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {query["Id"]: query["MetricStat"] for query in alarm["Metrics"] if "MetricStat" in query}


def test_functions_emit_metrics_in_the_namespace_the_alarms_watch(template: dict[str, Any]) -> None:
    variables = template["Globals"]["Function"]["Environment"]["Variables"]
    assert variables["POWERTOOLS_METRICS_NAMESPACE"] == STACK_NAMESPACE


@pytest.mark.not_per_function
def test_every_alarm_notifies_the_topic(translated: dict[str, Any]) -> None:
    alarms = _alarms(translated)
    assert set(alarms) == {
        "DeadLetterAlarm",
        "OldestTaskAlarm",
        "TaskFailureRateAlarm",
        "LostTasksAlarm",
        "FunctionErrorsAlarm",
        "FunctionThrottlesAlarm",
    }
    for name, alarm in alarms.items():
        assert alarm["AlarmActions"] == [{"Ref": "AlarmTopic"}], name
        assert alarm["TreatMissingData"] == "notBreaching", name
    assert translated["Resources"]["AlarmTopic"]["Type"] == "AWS::SNS::Topic"
    subscription = translated["Resources"]["AlarmEmailSubscription"]
    assert subscription["Condition"] == "HasAlarmEmail"
    # CloudFormation creates it only when the condition holds: the parameter, once resolved, is not empty.
    assert translated["Conditions"]["HasAlarmEmail"] == {"Fn::Not": [{"Fn::Equals": ["", ""]}]}
    with_email = translate({"AlarmEmail": "ops@example.com"})
    assert with_email["Conditions"]["HasAlarmEmail"] == {"Fn::Not": [{"Fn::Equals": ["ops@example.com", ""]}]}
    properties = with_email["Resources"]["AlarmEmailSubscription"]["Properties"]
    assert properties == {"TopicArn": {"Ref": "AlarmTopic"}, "Protocol": "email", "Endpoint": "ops@example.com"}


@pytest.mark.not_per_function
def test_queue_alarms_are_on_the_metrics_aws_recommends(translated: dict[str, Any]) -> None:
    """DLQ: visible messages (a redrive does not count in NumberOfMessagesSent); queue: oldest message age."""
    alarms = _alarms(translated)
    dead_letter, oldest = alarms["DeadLetterAlarm"], alarms["OldestTaskAlarm"]
    assert (dead_letter["Namespace"], dead_letter["MetricName"]) == ("AWS/SQS", "ApproximateNumberOfMessagesVisible")
    assert dead_letter["Dimensions"] == [
        {"Name": "QueueName", "Value": {"Fn::GetAtt": ["TaskDeadLetterQueue", "QueueName"]}}
    ]
    assert (dead_letter["Threshold"], dead_letter["ComparisonOperator"]) == (0, "GreaterThanThreshold")
    assert (oldest["Namespace"], oldest["MetricName"]) == ("AWS/SQS", "ApproximateAgeOfOldestMessage")
    assert oldest["Dimensions"] == [{"Name": "QueueName", "Value": {"Fn::GetAtt": ["TaskQueue", "QueueName"]}}]
    assert oldest["Threshold"] == 900, "the OldestTaskAgeAlarmSeconds parameter's default"
    overridden = translate({"OldestTaskAgeAlarmSeconds": "120"})["Resources"]["OldestTaskAlarm"]["Properties"]
    assert str(overridden["Threshold"]) == "120"


@pytest.mark.not_per_function
def test_failure_rate_alarm_divides_failures_by_runs_of_the_emitted_metrics(translated: dict[str, Any]) -> None:
    from shared.metrics import names

    alarm = _alarms(translated)["TaskFailureRateAlarm"]
    stats = _metric_stats(alarm)
    assert {stat["Metric"]["MetricName"] for stat in stats.values()} == {*names.FAILURES, "tasks_succeeded"}
    for stat in stats.values():
        assert stat["Metric"]["Namespace"] == STACK_NAMESPACE
        assert "Dimensions" not in stat["Metric"], "the namespace-wide dimension set: every task of every function"
        assert stat["Stat"] == "Sum"
        assert stat["Metric"]["MetricName"] in names.cloudwatch_metrics()
    assert () in names.DIMENSION_SETS, "the code emits the dimensionless metrics this alarm reads"
    [expression] = [query for query in alarm["Metrics"] if "Expression" in query]
    assert expression["ReturnData"] is True
    failed = [query_id for query_id, stat in stats.items() if stat["Metric"]["MetricName"] in names.FAILURES]
    for query_id in stats:
        assert query_id in expression["Expression"]
    assert expression["Expression"].startswith("100 * (" + " + ".join(f"FILL({i}, 0)" for i in failed) + ")")
    assert alarm["Threshold"] == 5
    overridden = translate({"TaskFailureRateAlarmPercent": "20"})["Resources"]["TaskFailureRateAlarm"]["Properties"]
    assert str(overridden["Threshold"]) == "20"


def test_lost_tasks_alarm_fires_on_any_lost_or_refused_handoff_of_the_emitted_metrics(
    translated: dict[str, Any],
) -> None:
    from shared.metrics import names

    alarm = _alarms(translated)["LostTasksAlarm"]
    stats = _metric_stats(alarm)
    assert {stat["Metric"]["MetricName"] for stat in stats.values()} == set(names.LOSSES)
    for stat in stats.values():
        assert stat["Metric"]["Namespace"] == STACK_NAMESPACE and stat["Stat"] == "Sum"
        assert "Dimensions" not in stat["Metric"], "every task of every function"
        assert stat["Metric"]["MetricName"] in names.cloudwatch_metrics()
    [expression] = [query for query in alarm["Metrics"] if "Expression" in query]
    assert expression["Expression"] == " + ".join(f"FILL({query_id}, 0)" for query_id in stats)
    assert (alarm["Threshold"], alarm["ComparisonOperator"]) == (0, "GreaterThanThreshold"), "one lost task fires it"
    dashboard = translated["Resources"]["TasksDashboard"]["Properties"]["DashboardBody"]
    assert all(metric in str(dashboard) for metric in names.LOSSES), "and the dashboard shows them"


def test_function_error_and_throttle_alarms_cover_every_function(translated: dict[str, Any]) -> None:
    alarms = _alarms(translated)
    for alarm_name, metric_name in (("FunctionErrorsAlarm", "Errors"), ("FunctionThrottlesAlarm", "Throttles")):
        alarm = alarms[alarm_name]
        stats = _metric_stats(alarm)
        functions_watched = set()
        for stat in stats.values():
            assert (stat["Metric"]["Namespace"], stat["Metric"]["MetricName"]) == ("AWS/Lambda", metric_name)
            [dimension] = stat["Metric"]["Dimensions"]
            assert dimension["Name"] == "FunctionName"
            functions_watched.add(dimension["Value"]["Ref"])
        assert functions_watched == {logical_id(name) for name in function_folders()}, alarm_name
        [total] = [query for query in alarm["Metrics"] if "Expression" in query]
        assert total["Expression"] == f"SUM([{', '.join(stats)}])"


def _dashboard(translated: dict[str, Any]) -> dict[str, Any]:
    body = translated["Resources"]["TasksDashboard"]["Properties"]["DashboardBody"]["Fn::Sub"]
    for placeholder, value in (
        ("${AWS::Region}", "us-east-1"),
        ("${AWS::StackName}", "STACK"),
        ("${TaskQueue.QueueName}", "TASK_QUEUE"),
        ("${TaskDeadLetterQueue.QueueName}", "DEAD_LETTER_QUEUE"),
    ):
        body = body.replace(placeholder, value)
    assert "${" not in body, "every placeholder is one of the stack's own"
    dashboard: dict[str, Any] = json.loads(body)
    return dashboard


def test_dashboard_shows_only_metrics_the_code_emits(translated: dict[str, Any]) -> None:
    import re

    from shared.metrics import names

    widgets = _dashboard(translated)["widgets"]
    titles = [widget["properties"]["title"] for widget in widgets]
    assert len(titles) == 4
    shown: dict[str, set[str]] = {}
    searched: set[str] = set()
    for widget in widgets:
        namespace = None
        for row in widget["properties"]["metrics"]:
            if isinstance(row[0], dict):  # an expression
                match = re.fullmatch(
                    r"SEARCH\('\{\"STACK\",(.+?)\} MetricName=\"(\w+)\"', '(p\d+)', 300\)", row[0]["expression"]
                )
                assert match, row
                assert tuple(match.group(1).split(",")) == names.DIMENSIONS
                searched.add(match.group(2))
                continue
            namespace = namespace if row[0] == "." else row[0]
            shown.setdefault(namespace, set()).add(row[1])
            dimensions = [item for item in row[2:] if not isinstance(item, dict)]
            if namespace == "AWS/SQS":
                assert dimensions in (["QueueName", "TASK_QUEUE"], [".", "."], ["QueueName", "DEAD_LETTER_QUEUE"])
    assert shown["STACK"] <= set(names.cloudwatch_metrics())
    assert shown["STACK"] >= {"tasks_succeeded", "tasks_failed", "tasks_timed_out", "tasks_queued"}
    assert searched == {names.DURATION}
    assert shown["AWS/SQS"] == {
        "ApproximateNumberOfMessagesVisible",
        "ApproximateNumberOfMessagesNotVisible",
        "ApproximateAgeOfOldestMessage",
    }


def test_the_readme_picture_is_drawn_from_the_deployed_dashboard(translated: dict[str, Any]) -> None:
    """infra/dashboard_plot.py reads template.yaml's DashboardBody: the same widgets as the translated template."""
    from infra.dashboard_plot import dashboard_body

    drawn = dashboard_body()["widgets"]
    deployed = _dashboard(translated)["widgets"]
    assert [(w["x"], w["y"], w["width"], w["height"], w["properties"]["title"]) for w in drawn] == [
        (w["x"], w["y"], w["width"], w["height"], w["properties"]["title"]) for w in deployed
    ]
    assert [len(w["properties"]["metrics"]) for w in drawn] == [len(w["properties"]["metrics"]) for w in deployed]
