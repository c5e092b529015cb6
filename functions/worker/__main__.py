"""``python -m functions.worker``: the same container worker as ``python -m shared.worker``."""

from shared.worker.poller import main

if __name__ == "__main__":
    main()
