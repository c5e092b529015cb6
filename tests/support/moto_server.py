"""moto's server in its own process on 127.0.0.1, provisioned as docker-compose and `make run` provision it."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import boto3

from infra.sam_local import provision
from infra.servers import ServerProcess, free_port, wait_until_healthy

REGION = "us-east-1"


@dataclass
class LocalAws:
    endpoint: str
    resources: dict[str, Any]

    def client(self, service: str) -> Any:
        return boto3.client(
            service,  # type: ignore[call-overload]
            endpoint_url=self.endpoint,
            region_name=REGION,
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )

    def table_items(self, table: str) -> list[dict[str, Any]]:
        return list(self.client("dynamodb").scan(TableName=table)["Items"])

    def emails_sent(self) -> int:
        return int(self.client("ses").get_send_quota()["SentLast24Hours"])

    def take_messages(self, task: str) -> list[dict[str, Any]]:
        """Receive (and keep in flight) the queued messages of ``task``."""
        sqs, found = self.client("sqs"), []
        for _ in range(5):
            response = sqs.receive_message(
                QueueUrl=self.resources["task_queue_url"],
                MaxNumberOfMessages=10,
                WaitTimeSeconds=1,
                AttributeNames=["All"],
                MessageAttributeNames=["All"],
            )
            found += [m for m in response.get("Messages", []) if json.loads(m["Body"])["task"] == task]
            if found:
                return found
        return found


@contextmanager
def running_moto() -> Iterator[LocalAws]:
    port = free_port()
    server = ServerProcess([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)], {}, port)
    try:
        wait_until_healthy(f"{server.base_url}/moto-api/", server.process)
        yield LocalAws(server.base_url, provision(server.base_url))
    finally:
        server.close()
