"""template.yaml is the one declaration of the resources: local AWS, the tests and Settings follow it."""

from __future__ import annotations

from pathlib import Path

import pytest

from infra.local_resources import create_resources
from infra.template import TEMPLATE, Template, template
from shared import aws
from shared.resources import MissingResource, resource_name
from shared.settings import Settings
from tests.support.aws_resources import mocked_aws

INVOICES = """
  InvoicesTable:
    Type: AWS::DynamoDB::Table
    Properties:
      BillingMode: PAY_PER_REQUEST
      AttributeDefinitions:
        - AttributeName: order_id
          AttributeType: S
      KeySchema:
        - AttributeName: order_id
          KeyType: HASH
"""


def with_invoices(tmp_path: Path, variable: str = "INVOICES_TABLE") -> Template:
    """The template plus a table and a function variable naming it, as a user would add them."""
    text = TEMPLATE.read_text().replace("\nResources:\n", "\nResources:\n" + INVOICES, 1)
    text = text.replace(
        "          SERVICE_NAME: items\n",
        f"          SERVICE_NAME: items\n          {variable}: !Ref InvoicesTable\n",
        1,
    )
    path = tmp_path / "template.yaml"
    path.write_text(text)
    return Template.read(path)


def test_settings_defaults_are_the_template_resources_local_names() -> None:
    """Where Settings has a field for a variable the template wires, its default is that resource's local name."""
    stack = template()
    names = stack.local_names({})
    queues = stack.of_type("AWS::SQS::Queue")  # a URL, known once the queue exists: no default
    checked = []
    for variable, target in stack.wiring().items():
        field = Settings.model_fields.get(variable.lower())
        if field is not None and target in names and target not in queues:
            assert field.default == names[target], variable
            checked.append(variable)
    assert {"USERS_TABLE", "IDEMPOTENCY_TABLE", "UPLOADS_BUCKET"} <= set(checked)


def test_a_table_added_to_the_template_is_created_and_passed_to_its_function(tmp_path: Path) -> None:
    stack = with_invoices(tmp_path)
    with mocked_aws():
        created = create_resources(stack)
        table = aws.dynamodb().meta.client.describe_table(TableName="fastapi-tasks-invoices")["Table"]
    assert "fastapi-tasks-invoices" in created["tables"]
    assert table["KeySchema"] == [{"AttributeName": "order_id", "KeyType": "HASH"}]
    assert created["environment"]["INVOICES_TABLE"] == "fastapi-tasks-invoices"
    assert stack.name_environment()["INVOICES_TABLE"] == "fastapi-tasks-invoices"


def test_the_task_queue_redrives_to_its_dead_letter_queue_as_declared() -> None:
    with mocked_aws() as state:
        created = create_resources()
        attributes = aws.sqs().get_queue_attributes(QueueUrl=created["task_queue_url"], AttributeNames=["All"])
    assert created["environment"]["TASK_QUEUE_URL"] == created["queues"]["TaskQueue"]
    redrive = attributes["Attributes"]["RedrivePolicy"]
    assert '"maxReceiveCount": "5"' in redrive or '"maxReceiveCount": 5' in redrive
    assert redrive.count("fastapi-tasks-task-dead-letter") == 1
    assert state.settings.idempotency_table in created["tables"]


def test_the_durable_task_list_is_the_template_default_unless_the_shell_sets_it() -> None:
    stack = template()
    default = stack.data["Parameters"]["DurableTasks"]["Default"]
    assert stack.environment({}, environ={})["DURABLE_TASKS"] == default
    assert stack.environment({}, environ={"DURABLE_TASKS": "*"})["DURABLE_TASKS"] == "*"


def test_one_variable_naming_two_resources_is_refused_in_one_line(tmp_path: Path) -> None:
    stack = with_invoices(tmp_path, variable="USERS_TABLE")
    with pytest.raises(ValueError, match=r"^template.yaml: USERS_TABLE refers to both UsersTable and InvoicesTable"):
        stack.wiring()


def test_a_missing_resource_variable_says_where_to_declare_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("INVOICES_TABLE", raising=False)
    with pytest.raises(MissingResource, match=r"INVOICES_TABLE is not set: give the function `INVOICES_TABLE: !Ref"):
        resource_name("INVOICES_TABLE")
    monkeypatch.setenv("INVOICES_TABLE", "invoices-prod")
    assert resource_name("INVOICES_TABLE") == "invoices-prod"


def test_docker_compose_sends_the_template_durable_tasks_and_mounts_the_template() -> None:
    """The containers cannot read template.yaml's parameters: compose repeats the list, and must agree."""
    import yaml

    compose = yaml.safe_load((TEMPLATE.parent / "infra" / "docker-compose.yml").read_text())
    default = template().data["Parameters"]["DurableTasks"]["Default"]
    assert compose["x-app"]["environment"]["DURABLE_TASKS"] == default
    assert "../template.yaml:/app/template.yaml:ro" in compose["services"]["setup"]["volumes"]


def test_docker_compose_names_every_resource_that_settings_has_no_default_for() -> None:
    """A function's own table (``make function TABLE=1``): the containers get its variable, with its local name."""
    import yaml

    compose = yaml.safe_load((TEMPLATE.parent / "infra" / "docker-compose.yml").read_text())
    settings_variables = {
        (field.validation_alias if isinstance(field.validation_alias, str) else name).upper()
        for name, field in Settings.model_fields.items()
    }
    own = {
        variable: name
        for variable, name in template().name_environment({}).items()
        if variable not in settings_variables
    }
    environment = compose["x-app"]["environment"]
    assert {variable: environment.get(variable) for variable in own} == own
