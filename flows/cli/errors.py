"""How a command ends: its exit code, and on failure one line on stderr that names the problem.

Exit codes: 0 ok, 1 run failure, 2 bad params or usage (and params the pre-flight check
refuses: data, splits or strategies that cannot work), 3 run lock held, 130 interrupted
(Ctrl-C, SIGINT), 143 terminated (SIGTERM). Both signals unwind the command like an
exception, so the flow run, the MLflow runs, the temporary API and the lock are ended by
the code that holds them, and one line says the command was interrupted.
The traceback of a failure is appended to ``.tlp/logs/tlp.log`` under the project, so the
terminal stays readable and nothing is lost; ``--verbose`` prints it instead, and
``TLP_DEBUG=1`` re-raises (a debugger or pytest sees the original exception). A failure a
full disk caused says so (``disk_full``), whichever writer met it.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import sys
import threading
import traceback
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

LOG_FILE = Path(".tlp") / "logs" / "tlp.log"
INTERRUPTED, TERMINATED = 130, 128 + signal.SIGTERM


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the command is, so it unwinds as Ctrl-C does (code that cleans up
    after KeyboardInterrupt, Prefect's and MLflow's included, cleans up after it too)."""


def _terminate(signum: int, frame: object) -> None:
    raise Terminated


@contextlib.contextmanager
def sigterm_unwinds() -> Iterator[None]:
    """SIGTERM raises ``Terminated`` in the main thread while the command runs (Prefect's
    flow engine installs its own handler inside a flow, raising its TerminationSignal)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def interrupted(exc: BaseException) -> int | None:
    """The exit code of a signal that unwound the command (130 or 143), else None; says so
    in one line on stderr."""
    prefect = sys.modules.get("prefect.exceptions")  # raised it only if it is loaded
    by_prefect = prefect is not None and isinstance(exc, prefect.TerminationSignal)
    if isinstance(exc, Terminated) or by_prefect:
        print("tlp: terminated (SIGTERM)", file=sys.stderr)
        return TERMINATED
    if isinstance(exc, KeyboardInterrupt):
        print("tlp: interrupted", file=sys.stderr)
        return INTERRUPTED
    return None


def _lock_busy() -> type[Exception]:
    from tasks.core.locking import RunLockBusy

    return RunLockBusy


def run_command(
    name: str, call: Callable[[], int | None], project: Path, verbose: bool, argv: Sequence[str]
) -> int:
    """Call the parsed command and turn what it raised into an exit code and one line."""
    from tasks.core.params import ParamsError

    try:
        with sigterm_unwinds():
            code = call()
    except ParamsError as exc:
        print(f"tlp: {_heading(name, exc)}: {exc}", file=sys.stderr)
        return 2
    except _lock_busy() as exc:
        print(f"tlp: {name} stopped: {exc}", file=sys.stderr)
        return 3
    except KeyboardInterrupt as exc:
        return interrupted(exc)
    except Exception as exc:
        from tasks.stages import StageFailed

        reason = str(exc) if isinstance(exc, StageFailed) else f"{type(exc).__name__}: {exc}"
        reason = disk_full(exc, project) or reason
        reason = "; ".join(line.strip() for line in reason.splitlines() if line.strip())
        debug = bool(os.environ.get("TLP_DEBUG"))
        where = "" if verbose else _append_traceback(project, argv)
        if verbose and not debug:  # TLP_DEBUG's re-raise prints it anyway
            traceback.print_exc()
        print(f"tlp: {name} failed: {reason}{where}", file=sys.stderr)
        if debug:
            raise
        return 1
    except BaseException as exc:  # Prefect's TerminationSignal (SIGTERM inside a flow)
        code = interrupted(exc)
        if code is None:
            raise
        return code
    return 0 if code is None else int(code)


# What a full disk looks like from the writers tlp uses: errno 28 from Python and DVC, the
# Rust io error safetensors reports, SQLite's (MLflow's store), and torch's zip writer, which
# only notices that fewer bytes landed than it wrote ("unexpected pos N vs M", "file write
# failed").
NO_SPACE = (
    "no space left on device",
    "storagefull",
    "os error 28",
    "errno 28",
    "database or disk is full",  # SQLite's SQLITE_FULL (the MLflow store)
)
SHORT_WRITE = ("unexpected pos", "file write failed")
LOW_SPACE = 256 << 20  # a short write with less than this free is taken as a full disk


def disk_full(exc: BaseException, project: Path) -> str | None:
    """The one line for an exception that a full disk caused, or None.

    Looks through the exception and its causes (a stage wraps what it raised): an
    ``OSError`` with errno ENOSPC names its file; a message that says so (safetensors, a
    subprocess) or torch's short-write error when the disk is nearly full names the
    project. Either way the line says how much is free on which mount, so the fix (free
    space there, or move the project or the DVC cache) is plain."""
    import errno

    chain = list(_chain(exc))
    enospc = [e for e in chain if isinstance(e, OSError) and e.errno == errno.ENOSPC]
    named = [Path(e.filename) for e in enospc if e.filename]
    full = enospc or any(any(s in str(e).lower() for s in NO_SPACE) for e in chain)
    short = any(any(s in str(e).lower() for s in SHORT_WRITE) for e in chain)
    if not full and not (short and _free(project)[0] < LOW_SPACE):
        return None
    path = named[0] if named else project.resolve()
    free, mount = _free(path)
    return f"no space left on device writing {path} ({_size(free)} free on {mount})"


def _chain(exc: BaseException):
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def _free(path: Path) -> tuple[int, str]:
    """Free bytes for this user and the mount point of ``path`` (its nearest existing parent)."""
    import shutil

    path = Path(os.path.abspath(path))
    while not path.exists() and path != path.parent:
        path = path.parent
    mount = path
    while not os.path.ismount(mount) and mount != mount.parent:
        mount = mount.parent
    try:
        return shutil.disk_usage(path).free, str(mount)
    except OSError:
        return 0, str(mount)


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def _heading(name: str, exc: Exception) -> str:
    """A params value that fails validation is a params error; params that validate but
    cannot work with the data or the strategies (tasks/stages/preflight.py) stop the
    command before any work."""
    from tasks.stages.preflight import PreflightError

    return f"{name} stopped before any work" if isinstance(exc, PreflightError) else "params error"


def _append_traceback(project: Path, argv: Sequence[str]) -> str:
    """Append the current exception's traceback to the project's log file; return the note
    that points there, or to ``--verbose`` when there is no project folder to write into
    (a mistyped ``-C`` must not create one) or it is read-only."""
    from datetime import UTC, datetime

    path = project.resolve() / LOG_FILE
    if not project.is_dir():
        return " (rerun with --verbose for the traceback)"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        stamp = datetime.now(UTC).isoformat(timespec="seconds")
        with path.open("a", encoding="utf-8") as log:
            log.write(f"--- {stamp} pid {os.getpid()}: tlp {shlex.join(argv)}\n")
            log.write(traceback.format_exc())
    except OSError:
        return " (rerun with --verbose for the traceback)"
    try:
        shown = path.relative_to(Path.cwd().resolve())
    except ValueError:
        shown = path
    return f" (traceback: {shown})"
