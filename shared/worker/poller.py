"""The worker as a long-running process, for container deployments.

Long-polls the queue (``ReceiveMessage`` with ``WaitTimeSeconds``) and runs each batch
through the same ``Worker`` as the Lambda handler, up to ``WORKER_CONCURRENCY`` messages side
by side: succeeded messages are deleted, failed ones left to come back after their visibility
timeout (and, after ``maxReceiveCount`` receives, to the dead-letter queue). Scale out by
running more processes.

SIGTERM (or SIGINT, Ctrl-C): a long poll in progress is abandoned at once; the messages in hand
get ``SHUTDOWN_GRACE_SECONDS`` to finish (then ``task.cancelled`` and the process ends
anyway, their messages coming back after their visibility timeout); the messages received but
not started are made visible again at once, and the process exits 0. SQS unreachable
at start-up is retried with the same backoff as a failed poll (``worker.start_failed``).
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from types import FrameType
from typing import TYPE_CHECKING, Any

from aws_lambda_powertools.utilities.batch.types import PartialItemFailureResponse
from botocore.exceptions import BotoCoreError, ClientError

from shared import aws
from shared.background import lifecycle
from shared.background.errors import TaskStuck
from shared.logs import ensure_logging_configured, get_logger
from shared.settings import ConfigurationError, Settings, exit_on_configuration_error, get_settings
from shared.worker.processing import EXIT_TASK_STUCK, Worker

if TYPE_CHECKING:
    from mypy_boto3_sqs import SQSClient
    from mypy_boto3_sqs.type_defs import MessageTypeDef

log = get_logger("shared.worker")

RECEIVE_ERROR_BACKOFF_S = (1.0, 2.0, 5.0, 10.0)


class PollInterrupted(BaseException):
    """Raised by the signal handler into a long poll (or the pause after a failed one).

    BaseException: botocore, which catches ``Exception`` around its HTTP calls, must not catch it.
    """


@dataclass(frozen=True)
class VisibilityDeadline:
    """Stands in for a Lambda context: a message may run until its visibility timeout ends."""

    deadline: float

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self.deadline - time.monotonic()) * 1000))


@dataclass
class PollStats:
    succeeded: int = 0
    failed: int = 0
    released: int = 0


def lambda_record(message: MessageTypeDef, queue_arn: str, region: str) -> dict[str, Any]:
    """A ``ReceiveMessage`` message in the shape Lambda gives the worker (the SQS event record)."""
    attributes = {
        name: {
            "dataType": value["DataType"],
            **({"stringValue": value["StringValue"]} if "StringValue" in value else {}),
        }
        for name, value in message.get("MessageAttributes", {}).items()
    }
    return {
        "messageId": message["MessageId"],
        "receiptHandle": message["ReceiptHandle"],
        "body": message["Body"],
        "attributes": dict(message.get("Attributes", {})),
        "messageAttributes": attributes,
        "md5OfBody": message.get("MD5OfBody", ""),
        "eventSource": "aws:sqs",
        "eventSourceARN": queue_arn,
        "awsRegion": region,
    }


class Poller:
    def __init__(
        self,
        worker: Worker,
        queue_url: str,
        *,
        wait_seconds: int = 20,
        batch_size: int = 10,
        region: str = "us-east-1",
        shutdown_grace_seconds: float = 30.0,
        client: Callable[[], SQSClient] = aws.sqs,
        poll_client: Callable[[], SQSClient] = aws.sqs_long_poll,
    ) -> None:
        self.worker = worker
        self.queue_url = queue_url
        self.wait_seconds = wait_seconds
        self.batch_size = batch_size
        self.region = region
        self.shutdown_grace_seconds = shutdown_grace_seconds
        self._client = client
        self._poll_client = poll_client
        self._stopping = False
        self._waiting = False
        self._in_hand: dict[str, MessageTypeDef] = {}
        self._unstarted: list[MessageTypeDef] = []
        self._grace_timer: threading.Timer | None = None
        self._stop_signal: str | None = None
        self._stop_requested = threading.Event()
        self._stop_handled = threading.Event()
        self.stats = PollStats()

    @classmethod
    def from_settings(cls, settings: Settings | None = None) -> Poller:
        settings = settings or get_settings()
        if not settings.task_queue_url:
            raise ConfigurationError("TASK_QUEUE_URL is not set: the worker has no queue to poll")
        return cls(
            Worker(settings),
            settings.task_queue_url,
            wait_seconds=settings.worker_wait_seconds,
            batch_size=settings.worker_batch_size,
            region=settings.aws_region,
            shutdown_grace_seconds=settings.shutdown_grace_seconds,
        )

    def stop(self, signum: int | None = None, frame: FrameType | None = None) -> None:
        """The signal handler: abandon a poll (or a pause) now; ``_on_stop``, a thread, does the rest.

        A handler runs on the main thread between two bytecodes, maybe while that thread holds the
        log stream's lock (it writes the batch's lines): a line logged here could deadlock the process.
        """
        if not self._stopping:
            self._stop_signal = signal.Signals(signum).name if signum else None
            self._stopping = True
            self._stop_requested.set()
        if self._waiting:
            self._waiting = False
            raise PollInterrupted

    def _on_stop(self) -> None:
        """Once stopped: log it, and give the tasks in hand their grace period."""
        self._stop_requested.wait()
        log.info("worker.stopping", signal=self._stop_signal)
        if self._in_hand:
            self._grace_timer = threading.Timer(self.shutdown_grace_seconds, self._grace_exceeded)
            self._grace_timer.daemon = True
            self._grace_timer.start()
        self._stop_handled.set()

    def install_signal_handlers(self) -> None:
        signal.signal(signal.SIGTERM, self.stop)
        signal.signal(signal.SIGINT, self.stop)

    # --- the loop --------------------------------------------------------------------

    def run(self) -> PollStats:
        threading.Thread(target=self._on_stop, name="worker-stop", daemon=True).start()
        inspected = self._reach_queue()
        if inspected is None:  # stopped before the queue could be reached
            self._finish()
            return self.stats
        queue_arn, visibility_timeout = inspected
        log.info(
            "worker.started",
            queue_url=self.queue_url,
            wait_seconds=self.wait_seconds,
            batch_size=self.batch_size,
            visibility_timeout_s=visibility_timeout,
            max_receives=self.worker.max_receives,
        )
        errors = 0
        while not self._stopping:
            try:
                messages = self._receive()
            except PollInterrupted:
                break
            except (BotoCoreError, ClientError) as exc:
                if not self._back_off("worker.receive_failed", exc, errors):
                    break
                errors += 1
                continue
            errors = 0
            received_at = time.monotonic()
            try:
                self._process(messages, queue_arn, VisibilityDeadline(received_at + visibility_timeout))
            except TaskStuck as exc:
                self._exit(EXIT_TASK_STUCK, str(exc))
        self._finish()
        return self.stats

    def _reach_queue(self) -> tuple[str, int] | None:
        """``_inspect_queue``, retried with the poll loop's backoff while SQS cannot be reached; None once stopped."""
        errors = 0
        while not self._stopping:
            try:
                return self._inspect_queue()
            except (BotoCoreError, ClientError) as exc:
                if not self._back_off("worker.start_failed", exc, errors):
                    return None
                errors += 1
        return None

    def _back_off(self, event: str, exc: Exception, errors: int) -> bool:
        """Log a failed SQS call and pause before the next try; False if a signal ended the pause."""
        delay = RECEIVE_ERROR_BACKOFF_S[min(errors, len(RECEIVE_ERROR_BACKOFF_S) - 1)]
        log.error(event, error_type=type(exc).__qualname__, error=str(exc), retry_in_s=delay)
        try:
            self._pause(delay)
        except PollInterrupted:
            return False
        return True

    def _finish(self) -> None:
        if self._stop_requested.is_set():
            self._stop_handled.wait(timeout=5)  # its worker.stopping line first, its grace timer known
        if self._grace_timer is not None:
            self._grace_timer.cancel()
        self.worker.close()
        self._log_stopped()

    def _log_stopped(self) -> None:
        log.info(
            "worker.stopped",
            succeeded=self.stats.succeeded,
            failed=self.stats.failed,
            released=self.stats.released,
        )

    def _grace_exceeded(self) -> None:
        """SHUTDOWN_GRACE_SECONDS after SIGTERM, tasks in hand still run: stop waiting for them."""
        for message in list(self._in_hand.values()):
            fields: dict[str, Any] = {"message_id": message["MessageId"]}
            try:
                body = json.loads(message["Body"])
                fields.update(task=body.get("task"), task_id=body.get("task_id"), request_id=body.get("request_id"))
            except (ValueError, AttributeError):
                pass
            if not lifecycle.is_open(str(fields.get("task_id"))):
                continue  # it ended already
            fields.update(backend="sqs", started=True, grace_s=self.shutdown_grace_seconds)
            consequence = "the worker exits without it; the message comes back after its visibility timeout"
            lifecycle.end("task.cancelled", fields, level="error", consequence=consequence)
        self._exit(0, "shutdown grace period exceeded")

    def _exit(self, code: int, reason: str) -> None:
        """End the process now: a task's thread cannot be stopped any other way."""
        self._release(list(self._unstarted))
        self._log_stopped()
        log.info("worker.exiting", reason=reason, exit_code=code)
        lifecycle.exit_process(code, reason)

    def _inspect_queue(self) -> tuple[str, int]:
        """The queue's ARN and visibility timeout; its redrive policy, if any, sets max receives."""
        attributes = self._client().get_queue_attributes(
            QueueUrl=self.queue_url, AttributeNames=["QueueArn", "VisibilityTimeout", "RedrivePolicy"]
        )["Attributes"]
        policy = attributes.get("RedrivePolicy")
        if policy:
            max_receives = int(json.loads(policy)["maxReceiveCount"])
            if max_receives != self.worker.max_receives:
                log.warning(
                    "worker.max_receives_mismatch",
                    task_max_receives=self.worker.max_receives,
                    queue_max_receive_count=max_receives,
                    using=max_receives,
                )
                self.worker.max_receives = max_receives
        else:
            log.warning(
                "worker.no_dead_letter_queue",
                queue_url=self.queue_url,
                consequence="a message that always fails is retried until the queue's retention period ends",
            )
        return attributes["QueueArn"], int(attributes["VisibilityTimeout"])

    def _pause(self, seconds: float) -> None:
        """Wait before retrying a failed receive; SIGTERM ends the wait, like a poll."""
        self._waiting = not self._stopping
        if not self._waiting:
            raise PollInterrupted
        try:
            time.sleep(seconds)
        finally:
            self._waiting = False

    def _receive(self) -> list[MessageTypeDef]:
        """One long poll, on a client whose read timeout outlasts it; SIGTERM abandons it."""
        client = self._poll_client()
        self._waiting = not self._stopping
        if not self._waiting:
            raise PollInterrupted
        try:
            response = client.receive_message(
                QueueUrl=self.queue_url,
                MaxNumberOfMessages=self.batch_size,
                WaitTimeSeconds=self.wait_seconds,
                MessageSystemAttributeNames=["ApproximateReceiveCount", "SentTimestamp", "AWSTraceHeader"],
                MessageAttributeNames=["All"],
            )
        finally:
            self._waiting = False
        return list(response.get("Messages", []))

    def may_start(self, message_id: str) -> bool:
        """The worker's gate (``shared.worker.batch``): no message starts once the worker is stopping."""
        if self._stopping:
            return False
        for index, message in enumerate(self._unstarted):
            if message["MessageId"] == message_id:
                self._in_hand[message_id] = self._unstarted.pop(index)
                break
        return True

    def _process(self, messages: Sequence[MessageTypeDef], queue_arn: str, deadline: VisibilityDeadline) -> None:
        """Run a batch; delete what succeeded, release at once what never started."""
        if not messages:  # a long poll that found nothing
            return
        self._unstarted = list(messages)
        records = [lambda_record(message, queue_arn, self.region) for message in messages]
        try:
            response = self.worker.handle({"Records": records}, deadline, gate=self)
        except TaskStuck:
            self._delete(self._succeeded(self._in_hand.values(), self.worker.last_response))
            raise  # the process ends: _exit releases the messages never started
        started, self._in_hand = list(self._in_hand.values()), {}
        unstarted, self._unstarted = self._unstarted, []
        done = self._succeeded(started, response)
        self.stats.succeeded += len(done)
        self.stats.failed += len(started) - len(done)
        if unstarted:
            self._release(unstarted)
        self._delete(done)

    @staticmethod
    def _succeeded(messages: Iterable[MessageTypeDef], response: PartialItemFailureResponse) -> list[MessageTypeDef]:
        failed = {failure["itemIdentifier"] for failure in response["batchItemFailures"]}
        return [message for message in messages if message["MessageId"] not in failed]

    def _delete(self, messages: Sequence[MessageTypeDef]) -> None:
        # A message not deleted comes back; its task is recorded as completed, so
        # idempotency skips it then. Worth a warning, not a retry.
        if not messages:
            return
        try:
            response = self._client().delete_message_batch(
                QueueUrl=self.queue_url,
                Entries=[{"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(messages)],
            )
        except (BotoCoreError, ClientError) as exc:
            log.warning("worker.delete_failed", message_ids=[m["MessageId"] for m in messages], error=str(exc))
            return
        for failure in response.get("Failed", []):
            log.warning(
                "worker.delete_failed",
                message_ids=[messages[int(failure["Id"])]["MessageId"]],
                error=failure.get("Message", failure["Code"]),
            )

    def _release(self, messages: Sequence[MessageTypeDef]) -> None:
        """Make messages received but not started visible again now, for another worker.

        Should this fail, they still come back once their visibility timeout ends.
        """
        if not messages:
            return
        message_ids = [m["MessageId"] for m in messages]
        try:
            self._client().change_message_visibility_batch(
                QueueUrl=self.queue_url,
                Entries=[
                    {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"], "VisibilityTimeout": 0}
                    for i, m in enumerate(messages)
                ],
            )
        except (BotoCoreError, ClientError) as exc:
            log.warning("worker.release_failed", message_ids=message_ids, error=str(exc))
            return
        self.stats.released += len(messages)
        log.info("worker.released", message_ids=message_ids)


def main() -> None:
    try:
        with exit_on_configuration_error():
            get_settings()
            ensure_logging_configured("worker")
            poller = Poller.from_settings()
    except KeyboardInterrupt:  # Ctrl-C while the task modules load: nothing started, nothing to stop
        raise SystemExit(0) from None
    poller.install_signal_handlers()
    settings = get_settings()
    if settings.worker_metrics_port:
        from shared.metrics.prometheus import start_http_server

        host = os.environ.get("HOST", "127.0.0.1")
        start_http_server(settings.worker_metrics_port, host)
        log.info("worker.metrics", url=f"http://{host}:{settings.worker_metrics_port}/metrics")
    poller.run()
