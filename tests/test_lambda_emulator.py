"""The Runtime API emulator keeps Lambda's rules, so what passes against it holds on Lambda."""

from __future__ import annotations

import pytest

from infra.runtime_api import (
    ExternalExtension,
    RuntimeApiEmulator,
    RuntimeClientProcess,
    runtime_takes_an_invocation,
)
from shared.background.extensions_api import ExtensionsApiClient, ExtensionsApiError


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
        runtime_takes_an_invocation(api, respond=False)
        api.wait_ready(10)

        with pytest.raises(ExtensionsApiError, match="RegistrationClosed"):
            ExtensionsApiClient(api.address).register("too-late", ["INVOKE"])
        api.shutdown(timeout=10)
        monitor.join()
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
