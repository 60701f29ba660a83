"""One pipeline run per project at a time: an OS file lock around the whole run.

Two ``tlp run`` in one project would otherwise race on the same SQLite files (MLflow, the
ephemeral Prefect API) and on ``dvc.lock``. The lock is ``flock(2)`` on
``.tlp/run.lock``: the kernel drops it when the holding process ends, however it ends, so a
crashed run never leaves a stale lock behind. Whoever comes second either waits (``wait``
seconds) or stops at once with a message naming the holder.

The lock is re-entrant inside one process (the CLI takes it before Prefect starts, the flow
takes it again so that runs started by a Prefect worker are covered too).
"""

from __future__ import annotations

import fcntl
import functools
import inspect
import json
import os
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, TypeVar

LOCK_FILE = ".tlp/run.lock"
POLL_SECONDS = 0.5

_held: dict[Path, tuple[IO[str], int]] = {}  # lock path -> (open file, depth) in this process

F = TypeVar("F", bound=Callable[..., Any])


class RunLockBusy(RuntimeError):
    """Another process holds the project's run lock (the message names it)."""


def lock_path(project_dir: Path) -> Path:
    return Path(project_dir).resolve() / LOCK_FILE


def read_holder(path: Path) -> dict[str, Any]:
    """Who holds (or last held) the lock, as it wrote itself into the file."""
    try:
        return json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        return {}


def _describe(holder: dict[str, Any]) -> str:
    if not holder:
        return "another process"
    return (
        f"pid {holder.get('pid')} on {holder.get('host')}, started {holder.get('started')}"
        f" ({holder.get('what', 'tlp run')})"
    )


def _try_lock(handle: IO[str]) -> bool:
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


@contextmanager
def run_lock(project_dir: Path, wait: float = 0.0, what: str = "tlp run") -> Iterator[Path]:
    """Hold the project's run lock; wait up to ``wait`` seconds for it, else RunLockBusy."""
    path = lock_path(project_dir)
    if path in _held:  # re-entry from the same process
        handle, depth = _held[path]
        _held[path] = (handle, depth + 1)
        try:
            yield path
        finally:
            handle, depth = _held[path]
            _held[path] = (handle, depth - 1)
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = path.open("a+")
    deadline = time.monotonic() + max(wait, 0.0)
    while not _try_lock(handle):
        if time.monotonic() >= deadline:
            handle.close()
            hint = "wait for it to finish, or pass --wait SECONDS to queue behind it"
            waited = f" after waiting {wait:.0f} s" if wait > 0 else ""
            raise RunLockBusy(
                f"{path.parent.parent}: another pipeline run holds the project lock {path}"
                f"{waited} ({_describe(read_holder(path))}); {hint}"
            )
        time.sleep(POLL_SECONDS)
    handle.seek(0)
    handle.truncate()
    started = datetime.now(UTC).isoformat(timespec="seconds")
    holder = {"pid": os.getpid(), "host": socket.gethostname(), "started": started, "what": what}
    handle.write(json.dumps(holder))
    handle.flush()
    _held[path] = (handle, 1)
    try:
        yield path
    finally:
        del _held[path]
        fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
        handle.close()


def holds_run_lock(fn: F) -> F:
    """Decorate a flow function taking ``project_dir`` (and optionally ``lock_wait``)."""
    signature = inspect.signature(fn)

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        bound = signature.bind(*args, **kwargs)
        bound.apply_defaults()
        project = Path(bound.arguments.get("project_dir", ".")).resolve()
        wait = float(bound.arguments.get("lock_wait", 0.0) or 0.0)
        with run_lock(project, wait=wait, what=fn.__name__):
            return fn(*args, **kwargs)

    return wrapper  # type: ignore[return-value]
