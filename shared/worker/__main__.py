"""``python -m shared.worker``: the container worker (see ``shared.worker.poller``)."""

from shared.worker.poller import main

if __name__ == "__main__":
    main()
