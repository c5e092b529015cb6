"""What the task layer raises, and the exit code of a process that had to end itself."""

from __future__ import annotations


class TaskRejected(Exception):
    """A task cannot be queued as given (bad arguments, unknown name, too large).

    ``client_input``: the refusal depends on values the client sent (a non-finite number, text
    that cannot be encoded, a body too large for a message), not on the code: the route answers
    ``status_code`` (4xx) instead of a 500.
    """

    def __init__(self, message: str, *, client_input: bool = False, status_code: int = 422) -> None:
        super().__init__(message)
        self.client_input = client_input
        self.status_code = status_code if client_input else 500


class PermanentTaskError(Exception):
    """Raise it (or an exception class derived from it) when running the task again cannot help.

    A bad file a user uploaded, arguments the task itself finds invalid: the worker logs
    ``task.failed`` with ``permanent: true`` and deletes the message, which is neither
    retried nor dead-lettered (the dead-letter queue is for failures someone must fix).
    """


class TaskStuck(Exception):
    """A sync task still runs at its hard deadline: only ending the process stops its thread."""


EXIT_TASK_STUCK = 3
"""Exit code of a process that ended itself to stop a sync task still running at its deadline."""
