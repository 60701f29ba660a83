"""Registry retries: transient store errors are retried with backoff, others raised at once,
and the last transient failure becomes RegistryUnavailable naming what was being done."""

from __future__ import annotations

import time

import pytest
from mlflow.exceptions import MlflowException

from tasks.registry.retries import RegistryUnavailable, is_transient, with_retries


def _failing(errors: list[BaseException], value="ok"):
    calls = []

    def fn():
        calls.append(time.monotonic())
        if len(calls) <= len(errors):
            raise errors[len(calls) - 1]
        return value

    return fn, calls


def test_transient_errors_are_retried_until_the_call_succeeds():
    locked = MlflowException("sqlite3.OperationalError: database is locked")
    fn, calls = _failing([locked, ConnectionError("reset")])
    assert with_retries(fn, "reading @champion", retries=3, delay=0) == "ok"
    assert len(calls) == 3


def test_a_wrong_request_is_raised_unchanged_without_retrying():
    missing = MlflowException("RESOURCE_DOES_NOT_EXIST: Registered Model 'x' not found")
    assert not is_transient(missing)
    fn, calls = _failing([missing])
    with pytest.raises(MlflowException, match="RESOURCE_DOES_NOT_EXIST"):
        with_retries(fn, "reading @champion", retries=3, delay=0)
    assert len(calls) == 1


def test_the_last_transient_failure_names_the_step_and_the_attempts():
    refused = MlflowException("API request to ... failed with exception Connection refused")
    fn, calls = _failing([refused] * 5)
    with pytest.raises(RegistryUnavailable, match="moving @champion: .* after 3 attempt") as err:
        with_retries(fn, "moving @champion", retries=2, delay=0.05)
    assert isinstance(err.value.__cause__, MlflowException) and len(calls) == 3
    gaps = [b - a for a, b in zip(calls, calls[1:], strict=False)]
    assert gaps[0] >= 0.05 and gaps[1] >= 0.1  # delay, then twice as long
