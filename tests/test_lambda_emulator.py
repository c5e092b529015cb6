"""The Runtime API emulator keeps Lambda's rules, so what passes against it holds on Lambda."""

from __future__ import annotations

import http.client
import threading
import time

import pytest

from shared.background.extensions_api import ExtensionsApiClient, ExtensionsApiError
from tests.support.runtime_api import ExternalExtension, RuntimeApiEmulator, RuntimeClientProcess


def ask_for_an_invocation(api: RuntimeApiEmulator) -> threading.Thread:
    """What a runtime does once its init is over: GET invocation/next (blocks until stop)."""

    def ask() -> None:
        connection = http.client.HTTPConnection(api.address)
        try:
            connection.request("GET", "/2018-06-01/runtime/invocation/next")
            connection.getresponse().read()
        except OSError:
            pass
        finally:
            connection.close()

    thread = threading.Thread(target=ask, daemon=True)
    thread.start()
    return thread


def test_internal_extensions_may_not_register_for_shutdown() -> None:
    with RuntimeApiEmulator() as api:
        client = ExtensionsApiClient(api.address)
        with pytest.raises(ExtensionsApiError, match="ShutdownEventNotSupportedForInternalExtension"):
            client.register("internal-one", ["INVOKE", "SHUTDOWN"])
        assert client.register("internal-one", ["INVOKE"])
        assert api.extension_named("internal-one").external is False


def test_registration_closes_when_the_runtime_asks_for_work_and_shutdown_reaches_external_extensions() -> None:
    with RuntimeApiEmulator() as api:
        monitor = ExternalExtension(api, "monitor")
        ask_for_an_invocation(api)
        api.wait_ready(10)

        with pytest.raises(ExtensionsApiError, match="RegistrationClosed"):
            ExtensionsApiClient(api.address).register("too-late", ["INVOKE"])
        api.shutdown(timeout=10)
        deadline = time.monotonic() + 10
        while not monitor.events and time.monotonic() < deadline:
            time.sleep(0.01)
        assert [event["eventType"] for event in monitor.events] == ["SHUTDOWN"]
        assert monitor.events[0]["shutdownReason"] == "spindown"


def test_the_runtime_reports_an_init_error_for_a_missing_handler() -> None:
    with RuntimeApiEmulator() as api:
        process = RuntimeClientProcess(api, "tests.support.no_such_module.handler")
        try:
            assert process.wait(60) == 1
            assert api.init_error is not None
            assert api.init_error["body"]["errorType"] == "Runtime.ImportModuleError"
            assert "no_such_module" in api.init_error["body"]["errorMessage"]
            assert api.invocations == []
        finally:
            process.close()
