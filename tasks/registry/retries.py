"""Retrying registry calls that failed because the tracking store was unreachable or busy.

MLflow's REST client already retries each HTTP request; this covers what is left after it
gives up (a server down for seconds, a SQLite store locked by another writer) around a whole
read or move, with exponential backoff from ``tenacity``. After the last try the caller gets
``RegistryUnavailable`` naming the store, and no alias has moved.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import mlflow
from mlflow.exceptions import MlflowException
from tenacity import RetryError, Retrying, retry_if_exception, stop_after_attempt, wait_exponential

T = TypeVar("T")


class RegistryUnavailable(RuntimeError):
    """The tracking server did not answer after retries; aliases were left where they were."""


_TRANSIENT_TEXT = (
    "failed with exception",  # MLflow REST client: connection refused, reset, timed out
    "Max retries exceeded",
    "Connection refused",
    "database is locked",  # SQLite store under concurrent writers
    "TEMPORARILY_UNAVAILABLE",
)


def is_transient(exc: BaseException) -> bool:
    """Errors worth retrying: the store was unreachable or busy, not a wrong request."""
    import requests

    if isinstance(exc, (requests.exceptions.ConnectionError, requests.exceptions.Timeout)):
        return True
    if isinstance(exc, (ConnectionError, TimeoutError)):
        return True
    text = str(exc)
    return isinstance(exc, MlflowException) and any(t in text for t in _TRANSIENT_TEXT)


def with_retries(fn: Callable[[], T], what: str, retries: int = 3, delay: float = 1.0) -> T:
    """Call ``fn``, retrying transient tracking errors ``retries`` times, waiting ``delay``,
    then twice as long each time; any other error is raised at once, unchanged."""
    retrying = Retrying(
        retry=retry_if_exception(is_transient),
        stop=stop_after_attempt(retries + 1),
        wait=wait_exponential(multiplier=delay),  # delay * 2**(attempt - 1)
    )
    try:
        return retrying(fn)
    except RetryError as err:
        exc = err.last_attempt.exception()
        first_line = str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__
        raise RegistryUnavailable(
            f"{what}: tracking server {mlflow.get_tracking_uri()} unreachable after "
            f"{retries + 1} attempt(s) ({first_line})"
        ) from exc
