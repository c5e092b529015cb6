"""No e-mail address in any log line: one processor at the end of the pipeline masks them all."""

from __future__ import annotations

import logging

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.logs import get_logger, mask_emails
from shared.worker import Worker
from tests.support.logs import LogCapture
from tests.support.sqs_queues import DurableAws, FakeLambdaContext, durable_aws

log = get_logger("tests.privacy")

ADDRESSES = {
    "jane.doe@example.com": "j***@example.com",
    "tilde~@example.com": "t***@example.com",
    "amp&@example.com": "a***@example.com",
    "hash#@example.com": "h***@example.com",
    "star*@example.com": "s***@example.com",
    "Jörg.Müller@example.de": "J***@example.de",
    "o'leary@example.ie": "o***@example.ie",
    "trailing'@example.com": "t***@example.com",
    "José.Ñúñez@exämple.es": "J***@exämple.es",
    "δοκιμή@παράδειγμα.δοκιμή": "δ***@παράδειγμα.δοκιμή",
    "first+tag@example.org": "f***@example.org",
    "{weird}|=!$^`@example.net": "{***@example.net",
}


def rendered(logs: LogCapture) -> str:
    return logs.stream.getvalue()


@pytest.mark.parametrize(("address", "masked"), ADDRESSES.items())
def test_every_address_is_masked_in_fields_nested_values_errors_and_stdlib_lines(
    logs: LogCapture, address: str, masked: str
) -> None:
    log.info("privacy.field", to=address, note=f"notification for {address}: hello")
    log.info("privacy.nested", recipients=[address, {"cc": (address,)}])
    try:
        raise ValueError(f"bad recipient <{address}>")
    except ValueError as exc:
        log.error("privacy.error", exc_info=exc)
    logging.getLogger("uvicorn.access").info('127.0.0.1:1 - "POST /send-notification/%s HTTP/1.1" 200', address)

    assert address not in rendered(logs)
    field, nested, error, access = logs.events
    assert field["to"] == masked
    assert field["note"] == f"notification for {masked}: hello"
    assert nested["recipients"] == [masked, {"cc": [masked]}]
    assert error["error"] == f"bad recipient <{masked}>"
    assert masked in str(error["exception"])
    assert access["event"] == f'127.0.0.1:1 - "POST /send-notification/{masked} HTTP/1.1" 200'


def test_text_around_an_address_and_url_quoted_addresses() -> None:
    assert mask_emails("/nowhere/jane@example.com") == "/nowhere/j***@example.com"
    assert mask_emails("{'to': 'jane@example.com'}") == "{'to': 'j***@example.com'}"
    assert mask_emails("a@b.example,c@d.example") == "a***@b.example,c***@d.example"
    assert mask_emails("GET /send-notification/jane.doe%40example.com") == "GET /send-notification/j***%40example.com"
    assert mask_emails("@decorator and user@ alone") == "@decorator and user@ alone"
    assert mask_emails('"jane doe"@example.com and a/@example.com') == '"***"@example.com and a***@example.com'
    assert mask_emails(["x", 1, None]) == ["x", 1, None]


def test_masking_is_linear_in_the_length_of_hostile_input() -> None:
    """A long run of address characters with no address in it: read once, not once per position."""
    text = "a" * 100_000 + " @ " + "b%" * 50_000 + "%40"
    assert mask_emails(text) == text


@settings(max_examples=300, deadline=None, derandomize=True, database=None)
@given(address=st.emails(), before=st.sampled_from(["", " ", "to ", "(", "<", "'", '"', "/path/"]))
def test_no_generated_address_survives_in_any_value(address: str, before: str) -> None:
    local, _, domain = address.rpartition("@")
    masked = mask_emails({"to": address, "error": f"refused {before}{address}, retry", "list": [address]})

    for value in (masked["to"], masked["error"], masked["list"][0]):
        assert address not in value
        assert f"***@{domain}" in value
        assert f"{local[1:]}@" not in value or len(local) == 1
    assert masked["to"].endswith(f"***@{domain}") and len(masked["to"]) <= 4 + len(address)


@pytest.fixture
def durable(monkeypatch: pytest.MonkeyPatch) -> DurableAws:  # type: ignore[misc]
    with durable_aws(monkeypatch) as resources:
        yield resources


def test_a_rejected_message_logs_where_it_is_wrong_never_its_arguments(durable: DurableAws, logs: LogCapture) -> None:
    from shared import aws

    body = '{"v": 1, "task": "email.send_welcome", "task_id": "t1", "args": ["jane.doe@example.com", "Jane"]}'
    aws.sqs().send_message(QueueUrl=durable.queues.url, MessageBody=body)
    worker = Worker()
    try:
        worker.handle(durable.event(durable.receive()), FakeLambdaContext())
    finally:
        worker.close()

    [rejected] = logs.named("task.rejected")
    assert (
        rejected["error"]
        == "not a task message: 2 validation error(s): kwargs: Field required; enqueued_at: Field required"
    )
    assert "jane" not in rendered(logs)
