"""How a command ends: its exit code, and on failure one line on stderr that names the problem.

Exit codes: 0 ok, 1 run failure, 2 bad params or usage (and params the pre-flight check
refuses: data, splits or strategies that cannot work), 3 run lock held, 130 interrupted
(Ctrl-C, SIGINT), 143 terminated (SIGTERM). Both signals unwind the command like an
exception, so the flow run, the MLflow runs, the temporary API and the lock are ended by
the code that holds them, and one line says the command was interrupted.
The traceback of a failure is appended to ``.tlp/logs/tlp.log`` under the project, so the
terminal stays readable and nothing is lost; ``--verbose`` prints it instead, and
``TLP_DEBUG=1`` re-raises (a debugger or pytest sees the original exception).
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
