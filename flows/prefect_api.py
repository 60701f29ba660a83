"""Prefect's temporary API server for one ``tlp run``, started first and without its code.

With no ``PREFECT_API_URL``, Prefect starts a temporary ("ephemeral") API server in a
subprocess when the first flow runs: it first imports the server's code into the calling
process (about 5 s of CPU on 2 cores, none of it needed there), then waits several seconds
for the subprocess. ``tlp run`` instead launches the same server the same way (Prefect's
uvicorn command and ephemeral-mode environment, on 127.0.0.1 and a free port) as its first
step, so it starts while torch, timm and MLflow are imported, then points Prefect in this
process at it. Like Prefect's, it stops at interpreter exit, after Prefect's log and event
workers have sent what they hold.

Nothing is launched when ``PREFECT_API_URL`` names a running server (environment or Prefect
profile: it is used as it is), when Prefect's ephemeral mode is off, or with
``TLP_PREFECT_PRESTART=0`` (Prefect then starts its server itself, as it would without tlp).
Nor when a server already serves this project: ``tlp server`` records its pid, URL and
database in ``.tlp/prefect/server.json`` once it answers (and removes it when it stops);
``tlp run`` uses that server after a fast health check (no start, no wait, and its flow run
is on that server's UI). A record whose process is gone, is not that server (a reused pid,
another port) or names another database is stale: it is removed and the run starts its own.

Where flow runs are stored: in the project, ``.tlp/prefect/prefect.db``, not the user-wide
``~/.prefect/prefect.db`` where the flow runs of every project mixed. Only the server's
database moves (Prefect's ``server.database.connection_url`` setting), not PREFECT_HOME, so
the user's Prefect profiles and settings keep working. The user's own choice wins: a
``PREFECT_API_URL``, a ``PREFECT_HOME``, or a database setting, in the environment or in the
active Prefect profile, leaves Prefect where the user put it.

The server runs in a session of its own, so a terminal's Ctrl-C (SIGINT to tlp's process
group) reaches tlp, which stops the flow while the server records it; on Linux the kernel
also sends it SIGTERM when tlp dies (``PR_SET_PDEATHSIG``), even by ``kill -9``. Its pid is
written to ``.tlp/prefect/api.pid``: a server some older crash left behind is stopped by the
next ``tlp run`` (only if its command line is this server's).
"""

from __future__ import annotations

import atexit
import contextlib
import importlib.util
import itertools
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

PORT_IN_USE = 3  # uvicorn's exit code when it cannot bind
DATABASE_DIR = Path(".tlp") / "prefect"
PID_FILE = DATABASE_DIR / "api.pid"
SERVER_RECORD = DATABASE_DIR / "server.json"  # a `tlp server` serving this project
HEALTH_TIMEOUT = 1.0  # seconds a recorded server has to answer before a run starts its own
SERVER_APP = "prefect.server.api.server:create_app"
DATABASE_SETTING = "PREFECT_SERVER_DATABASE_CONNECTION_URL"
# settings by which a user says where Prefect keeps its state (tlp then leaves it there)
USER_CHOICES = (
    "PREFECT_API_URL",
    "PREFECT_HOME",
    "PREFECT_SERVER_DATABASE_CONNECTION_URL",
    "PREFECT_API_DATABASE_CONNECTION_URL",
    "PREFECT_SERVER_DATABASE_DRIVER",
    "PREFECT_API_DATABASE_DRIVER",
    "PREFECT_SERVER_DATABASE_NAME",
    "PREFECT_API_DATABASE_NAME",
)
PR_SET_PDEATHSIG = 1


class ApiStartFailed(RuntimeError):
    """The temporary Prefect API server did not come up."""


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _active_profile() -> dict[str, str]:
    """The settings of the active Prefect profile, read from profiles.toml without importing
    Prefect (``tlp run`` launches the server before Prefect is imported)."""
    import tomllib

    home = Path(os.environ.get("PREFECT_HOME") or "~/.prefect").expanduser()
    path = Path(os.environ.get("PREFECT_PROFILES_PATH") or home / "profiles.toml").expanduser()
    try:
        profiles = tomllib.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    name = os.environ.get("PREFECT_PROFILE") or profiles.get("active", "ephemeral")
    found = profiles.get("profiles", {}).get(name, {})
    return {str(k): str(v) for k, v in found.items()} if isinstance(found, dict) else {}


def project_database_url(project: Path, server: bool = False) -> str | None:
    """The project's own Prefect database (SQLite under ``.tlp/prefect``), or None when the
    user chose where Prefect keeps its state (environment or active profile). For a
    ``server`` (``tlp server``) an API URL is where clients look, not a choice of database."""
    profile = _active_profile()
    choices = USER_CHOICES[1:] if server else USER_CHOICES
    if any(os.environ.get(key) or profile.get(key) for key in choices):
        return None
    folder = Path(project).resolve() / DATABASE_DIR
    folder.mkdir(parents=True, exist_ok=True)
    return f"sqlite+aiosqlite:///{folder / 'prefect.db'}"


@contextlib.contextmanager
def project_database(project: Path) -> Iterator[None]:
    """Flows run inside the block by Prefect's own temporary server store their runs in the
    project's database (Prefect passes its current settings to the server it starts)."""
    url = project_database_url(project)
    if url is None:
        yield
        return
    from prefect.settings import PREFECT_SERVER_DATABASE_CONNECTION_URL, temporary_settings

    with temporary_settings({PREFECT_SERVER_DATABASE_CONNECTION_URL: url}):
        yield


def _die_with_parent() -> None:
    """In the server's process, before it runs: SIGTERM when tlp dies, however it dies."""
    import ctypes

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def _is_our_server(pid: int, port: int) -> bool:
    """Whether ``pid`` runs the temporary API server tlp launched on ``port`` (its command
    line: a reused pid, or another project's server, does not match)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    wanted = (b"uvicorn", SERVER_APP.encode(), b"--port", str(port).encode())
    return all(part in cmdline for part in wanted)


def left_by_a_killed_run(project: Path) -> bool:
    """A temporary API's pid file outlives only a ``tlp run`` that was killed (``stop``
    removes it, at exit or on Ctrl-C / SIGTERM)."""
    return (Path(project).resolve() / PID_FILE).is_file()


def stop_orphan(project: Path) -> int | None:
    """Stop a temporary API server that a killed ``tlp run`` of this project left running
    (from its pid file); returns its pid, or None when there was none."""
    path = Path(project).resolve() / PID_FILE
    try:
        recorded = json.loads(path.read_text())
        pid, port = int(recorded["pid"]), int(recorded["port"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    found = None
    if pid != os.getpid() and _is_our_server(pid, port):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGTERM)  # its own session: the group is all of it
            found = pid
    path.unlink(missing_ok=True)
    return found


class TemporaryApi:
    """One uvicorn process serving Prefect's API on 127.0.0.1, for this process only."""

    def __init__(self, project: Path | None = None) -> None:
        self.port = 0
        self.process: subprocess.Popen | None = None
        self.project = None if project is None else Path(project).resolve()
        self.database_url = None if project is None else project_database_url(project)
        self._log = tempfile.TemporaryFile()  # noqa: SIM115 (closed by stop)

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api"

    def launch(self) -> None:
        # where prefect is installed, without importing it: the server's code loads there only
        site = Path(importlib.util.find_spec("prefect").origin).parent.parent
        self.port = _free_port()
        database = {DATABASE_SETTING: self.database_url} if self.database_url else {}
        self.process = subprocess.Popen(
            [
                sys.executable,
                *("-m", "uvicorn", "--app-dir", str(site)),
                *("--factory", SERVER_APP),
                *("--host", "127.0.0.1", "--port", str(self.port)),
                *("--log-level", "error", "--lifespan", "on"),
            ],
            env={
                **os.environ,
                **database,
                "PREFECT_UI_ENABLED": "0",
                "PREFECT__SERVER_EPHEMERAL": "1",
                "PREFECT__SERVER_FINAL": "1",
            },
            stdout=subprocess.DEVNULL,
            stderr=self._log,
            start_new_session=True,  # a terminal's Ctrl-C is tlp's to handle, not the server's
            preexec_fn=_die_with_parent if sys.platform == "linux" else None,  # noqa: PLW1509
        )
        self._write_pid_file()

    def _write_pid_file(self) -> None:
        if self.project is None:
            return
        path = self.project / PID_FILE
        with contextlib.suppress(OSError):
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps({"pid": self.process.pid, "port": self.port}))

    def wait_until_up(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            code = self.process.poll()
            if code == PORT_IN_USE:  # another process took the port meanwhile
                self.launch()
            elif code is not None:
                raise ApiStartFailed(
                    f"Prefect's temporary API server exited with code {code}: {self._stderr()}"
                )
            try:
                with urllib.request.urlopen(f"{self.api_url}/health", timeout=2) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.1)
        raise ApiStartFailed(
            f"Prefect's temporary API server did not answer within {timeout:.0f} s "
            "(PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS)"
        )

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
            self.process = None
            if self.project is not None:
                (self.project / PID_FILE).unlink(missing_ok=True)
        self._log.close()

    def _stderr(self) -> str:
        self._log.seek(0)
        return self._log.read().decode(errors="replace")[-2000:].strip() or "no output"


class RunningServer:
    """A Prefect server that already serves this project (``tlp server``): used, never
    started or stopped by the run."""

    process = None

    def __init__(self, api_url: str) -> None:
        self.api_url = api_url.rstrip("/")

    @property
    def ui_url(self) -> str:
        return self.api_url.removesuffix("/api")

    def wait_until_up(self, timeout: float) -> None:
        """Checked already (``serving_server``)."""

    def stop(self) -> None:
        """Not the run's to stop."""


def server_record(project: Path, port: int, database_url: str | None) -> tuple[Path, dict] | None:
    """Where ``tlp server`` records the Prefect server it starts for ``project``, and what:
    None when the server does not use the project's database (the user chose another)."""
    if database_url is None:
        return None
    info = {"api_url": f"http://127.0.0.1:{port}/api", "port": port, "database": database_url}
    return Path(project).resolve() / SERVER_RECORD, info


def _serves_port(pid: int, port: int) -> bool:
    """Whether ``pid`` is a server started with ``--port port`` (``prefect server start``,
    uvicorn): its command line says so, not a reused pid's."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return any(a == b"--port" and b == str(port).encode() for a, b in itertools.pairwise(cmdline))


def _answers(api_url: str, timeout: float = HEALTH_TIMEOUT) -> bool:
    try:
        with urllib.request.urlopen(f"{api_url}/health", timeout=timeout) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


def serving_server(project: Path) -> RunningServer | None:
    """The Prefect server recorded as serving ``project`` on the database a run of it would
    use, when it is alive and answers within ``HEALTH_TIMEOUT``; a stale record is removed."""
    path = Path(project).resolve() / SERVER_RECORD
    try:
        recorded = json.loads(path.read_text())
        pid, port, api_url = int(recorded["pid"]), int(recorded["port"]), recorded["api_url"]
        database = recorded["database"]
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError):
        path.unlink(missing_ok=True)
        return None
    if not _serves_port(pid, port):
        path.unlink(missing_ok=True)  # gone, or a reused pid, or another port
        return None
    if database != project_database_url(project):  # not where this run's flow runs belong
        return None
    return RunningServer(api_url) if _answers(api_url) else None


def start_early(project: Path | None = None) -> TemporaryApi | RunningServer | None:
    """Launch the server now (on ``project``'s own database), unless the environment names an
    API or asks for Prefect's own start, or a server already serves the project (then that
    one); ``use`` later checks the Prefect profile too."""
    if os.environ.get("TLP_PREFECT_PRESTART", "1") == "0" or os.environ.get("PREFECT_API_URL"):
        return None
    if project is not None and (running := serving_server(project)) is not None:
        return running
    api = TemporaryApi(project)
    try:
        api.launch()
    except OSError:  # Prefect will start its own server and report what is wrong
        api.stop()
        return None
    atexit.register(api.stop)  # after Prefect's workers drain (they hook in before atexit)
    return api


@contextmanager
def use(api: TemporaryApi | RunningServer | None) -> Iterator[None]:
    """Prefect in this process talks to ``api`` inside the block."""
    from prefect.settings import (
        PREFECT_API_URL,
        PREFECT_SERVER_EPHEMERAL_ENABLED,
        PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS,
        PREFECT_UI_URL,
        temporary_settings,
    )

    if isinstance(api, RunningServer) and not PREFECT_API_URL.value():
        with temporary_settings({PREFECT_API_URL: api.api_url, PREFECT_UI_URL: api.ui_url}):
            yield  # the project's server: its UI shows the run
        return
    if api is None or PREFECT_API_URL.value() or not PREFECT_SERVER_EPHEMERAL_ENABLED.value():
        if api is not None:
            api.stop()
        yield  # a configured server (profile), or Prefect's own handling
        return
    try:
        api.wait_until_up(PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS.value())
    except ApiStartFailed:
        api.stop()
        raise
    # no UI link: the server and its UI are gone when the run ends
    with temporary_settings({PREFECT_API_URL: api.api_url, PREFECT_UI_URL: ""}):
        yield
