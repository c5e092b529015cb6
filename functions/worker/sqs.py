"""The worker's Lambda handler: SQS events from the task queue's event source mapping.

``template.yaml`` points the worker function here rather than at ``app.py`` so that its
cold start imports no FastAPI: on Lambda the worker never serves HTTP.
"""

from __future__ import annotations

from shared.worker import make_sqs_handler

handler = make_sqs_handler()
