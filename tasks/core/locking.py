"""One writer per project at a time: an OS file lock around every command that writes.

Two ``tlp run`` in one project would otherwise race on the same SQLite files (MLflow, the
ephemeral Prefect API) and on ``dvc.lock``; ``tlp params`` beside a run would rewrite the
``params.resolved.yaml`` the run's stages are committed with (so ``dvc.lock`` records params
the stages did not train with), ``tlp validate`` would rewrite ``data/`` under it. So every
command that writes project state (run, stage, params, validate, rank, promote, rollback,
reproduce, and the flow runs ``tlp serve`` starts) holds this lock.

The lock is ``filelock.FileLock`` on ``.tlp/run.lock`` (``flock(2)`` underneath): the
kernel drops it when the holding process ends, however it ends, so a crashed run never
leaves a stale lock behind. The holder writes who it is (and which command) into the file it
locked; whoever comes second either waits (``wait`` seconds) or stops at once with a
message naming the holder.

The lock is re-entrant inside one process (the CLI takes it before Prefect starts, the flow
takes it again so that runs started by a Prefect worker are covered too).
"""

from __future__ import annotations

import functools
import inspect
import json
import logging
import os
import socket
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from filelock import FileLock, Timeout

LOCK_FILE = ".tlp/run.lock"
POLL_SECONDS = 0.5

log = logging.getLogger(__name__)
_held: dict[Path, FileLock] = {}  # lock path -> the lock this process holds

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


def _holder_writer(what: str) -> Callable[[int], None]:
    """Write who holds the lock into the locked file, once it is ours (filelock's hook)."""

    def write(fd: int) -> None:
        started = datetime.now(UTC).isoformat(timespec="seconds")
        holder = {"pid": os.getpid(), "host": socket.gethostname(), "started": started}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps({**holder, "what": what}).encode(), 0)

    return write


def _busy(path: Path, wait: float) -> RunLockBusy:
    hint = "wait for it to finish, or pass --wait SECONDS to queue behind it"
    waited = f" after waiting {wait:.0f} s" if wait > 0 else ""
    return RunLockBusy(
        f"{path.parent.parent}: another tlp command holds the project lock {path}"
        f"{waited} ({_describe(read_holder(path))}); {hint}"
    )


@contextmanager
def run_lock(project_dir: Path, wait: float = 0.0, what: str = "tlp run") -> Iterator[Path]:
    """Hold the project's run lock; wait up to ``wait`` seconds for it, else RunLockBusy."""
    path = lock_path(project_dir)
    if path in _held:  # re-entry from the same process (any thread): the outer hold covers it
        yield path
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(
        path,
        thread_local=False,  # the CLI's thread takes it, a flow may re-enter from another
        poll_interval=POLL_SECONDS,
        preserve_lock_file=True,  # the holder's description stays readable in the file
        on_acquired=_holder_writer(what),
    )
    try:
        lock.acquire(timeout=0)  # one attempt first: a queued command says it is waiting
    except Timeout:
        if wait <= 0:
            raise _busy(path, wait) from None
        log.info("waiting up to %.0f s for the run lock (%s)", wait, _describe(read_holder(path)))
        try:
            lock.acquire(timeout=wait)
        except Timeout:
            raise _busy(path, wait) from None
    _held[path] = lock
    try:
        yield path
    finally:
        del _held[path]
        lock.release()


def holds_run_lock(fn: F) -> F:
    """Decorate a flow function taking ``project_dir`` (and optionally ``lock_wait``)."""
    signature = inspect.signature(fn)

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        bound = signature.bind(*args, **kwargs)
        bound.apply_defaults()
        project = Path(bound.arguments.get("project_dir", ".")).resolve()
        wait = float(bound.arguments.get("lock_wait", 0.0) or 0.0)
        with run_lock(project, wait=wait, what=f"flow {fn.__name__}"):
            return fn(*args, **kwargs)

    return wrapper  # type: ignore[return-value]
