"""moto's SQS keeping ``MessageSystemAttributes`` of ``SendMessageBatch`` entries, as SQS does.

moto 5.2.5 stores ``AWSTraceHeader`` for ``SendMessage`` but drops it from batch entries
(``SQSBackend.send_message_batch`` does not pass ``system_attributes`` on). SQS keeps it for
both (``SendMessageBatchRequestEntry.MessageSystemAttributes``); this puts the entry's system
attributes on the stored message, so ``ReceiveMessage`` returns them as it would.
"""

from __future__ import annotations

from typing import Any

import pytest
from moto.sqs.models import SQSBackend


def keep_batch_system_attributes(monkeypatch: pytest.MonkeyPatch) -> None:
    original = SQSBackend.send_message_batch

    def send_message_batch(self: SQSBackend, queue_name: str, entries: dict[str, dict[str, Any]]) -> Any:
        messages, failed = original(self, queue_name, entries)
        by_id = {entry["Id"]: entry for entry in entries.values()}
        for message in messages:
            message.system_attributes = by_id[message.user_id].get("MessageSystemAttributes") or {}
        return messages, failed

    monkeypatch.setattr(SQSBackend, "send_message_batch", send_message_batch)
