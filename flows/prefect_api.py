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
"""

from __future__ import annotations

import atexit
import importlib.util
import os
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


class ApiStartFailed(RuntimeError):
    """The temporary Prefect API server did not come up."""


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class TemporaryApi:
    """One uvicorn process serving Prefect's API on 127.0.0.1, for this process only."""

    def __init__(self) -> None:
        self.port = 0
        self.process: subprocess.Popen | None = None
        self._log = tempfile.TemporaryFile()  # noqa: SIM115 (closed by stop)

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api"

    def launch(self) -> None:
        # where prefect is installed, without importing it: the server's code loads there only
        site = Path(importlib.util.find_spec("prefect").origin).parent.parent
        self.port = _free_port()
        self.process = subprocess.Popen(
            [
                sys.executable,
                *("-m", "uvicorn", "--app-dir", str(site)),
                *("--factory", "prefect.server.api.server:create_app"),
                *("--host", "127.0.0.1", "--port", str(self.port)),
                *("--log-level", "error", "--lifespan", "on"),
            ],
            env={
                **os.environ,
                "PREFECT_UI_ENABLED": "0",
                "PREFECT__SERVER_EPHEMERAL": "1",
                "PREFECT__SERVER_FINAL": "1",
            },
            stdout=subprocess.DEVNULL,
            stderr=self._log,
        )

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
        self._log.close()

    def _stderr(self) -> str:
        self._log.seek(0)
        return self._log.read().decode(errors="replace")[-2000:].strip() or "no output"


def start_early() -> TemporaryApi | None:
    """Launch the server now, unless the environment names an API or asks for Prefect's own
    start; ``use`` later checks the Prefect profile too."""
    if os.environ.get("TLP_PREFECT_PRESTART", "1") == "0" or os.environ.get("PREFECT_API_URL"):
        return None
    api = TemporaryApi()
    try:
        api.launch()
    except OSError:  # Prefect will start its own server and report what is wrong
        api.stop()
        return None
    atexit.register(api.stop)  # after Prefect's workers drain (they hook in before atexit)
    return api


@contextmanager
def use(api: TemporaryApi | None) -> Iterator[None]:
    """Prefect in this process talks to ``api`` inside the block."""
    from prefect.settings import (
        PREFECT_API_URL,
        PREFECT_SERVER_EPHEMERAL_ENABLED,
        PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS,
        PREFECT_UI_URL,
        temporary_settings,
    )

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
