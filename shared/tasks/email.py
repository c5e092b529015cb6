"""E-mail through SES ``SendEmail``, or into the notification log when there is no SES.

``MAIL_BACKEND=ses`` (the default) sends from ``MAIL_SENDER``, which SES must have
verified; ``MAIL_BACKEND=log`` appends one line per message to the notification log
of the notifications function, for a laptop without any AWS at all.
"""

from __future__ import annotations

from shared import aws
from shared.background import task
from shared.ids import new_id
from shared.logs import get_logger, mask_emails
from shared.settings import get_settings
from shared.tasks import notification_log

log = get_logger("shared.tasks.email")


class EmailNotSent(Exception):
    """SES did not take the message; the reason, with e-mail addresses masked."""


def deliver(to: str, subject: str, body: str) -> str:
    """Send one text message; returns the SES message id (``log-...`` for the log backend)."""
    settings = get_settings()
    if settings.mail_backend == "log":
        one_line = " ".join(body.split())
        notification_log.append(f"email to {to}: [{subject}] {one_line}\n")
        message_id = f"log-{new_id()}"
    else:
        from botocore.exceptions import ClientError  # loaded with the client, not at cold start

        try:
            response = aws.ses().send_email(
                Source=settings.mail_sender,
                Destination={"ToAddresses": [to]},
                Message={
                    "Subject": {"Data": subject, "Charset": "UTF-8"},
                    "Body": {"Text": {"Data": body, "Charset": "UTF-8"}},
                },
            )
        except ClientError as exc:
            # SES names the unverified or rejected addresses; the task layer logs this error.
            error = exc.response.get("Error", {})
            raise EmailNotSent(f"SES {error.get('Code')}: {mask_emails(error.get('Message', ''))}") from None
        message_id = response["MessageId"]
    log.info(
        "email.sent",
        to=mask_emails(to),
        subject=mask_emails(subject),
        mail_backend=settings.mail_backend,
        message_id=message_id,
    )
    return message_id


def welcome_message(name: str) -> tuple[str, str]:
    return (
        "Welcome aboard",
        f"Hello {name},\n\nThank you for signing up. Your account is ready.\n",
    )


@task("email.send_welcome", timeout=20)
def send_welcome_email(to: str, name: str) -> None:
    subject, body = welcome_message(name)
    deliver(to, subject, body)


@task("email.send_item_created", timeout=20)
def send_item_created(item_id: str, name: str) -> None:
    """Tell ``ITEMS_NOTIFY_TO`` that an item was added to the catalogue."""
    deliver(
        get_settings().items_notify_to,
        f"New item: {name}",
        f"The item {name!r} was added to the catalogue with id {item_id}.\n",
    )


@task("email.send", timeout=30)
def send_message(to: str, subject: str, body: str) -> None:
    """Any text message: a function's own e-mail needs no task of its own (durable when DURABLE_TASKS names it)."""
    deliver(to, subject, body)
