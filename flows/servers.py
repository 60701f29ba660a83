"""``tlp ui`` and ``tlp server``: the MLflow UI and local team servers, on 127.0.0.1 only.

``tlp ui`` opens the MLflow UI on the project's own store (``storage.tracking_uri``).
``tlp server`` starts, in one supervised group, a Prefect server (the project's SQLite)
and an MLflow tracking server (the project's store, artifacts served by it) for a small team
on one box; both stop together on Ctrl-C. Servers listen on 127.0.0.1: reach them from other
machines through an SSH tunnel or a proxy you trust, or use infra/docker-compose.yml.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

HOST = "127.0.0.1"


@dataclass
class Service:
    """One server process: its name, command line, health URL and extra environment."""

    name: str
    argv: list[str]
    health_url: str
    env: dict[str, str] = field(default_factory=dict)
    # a file where the server's pid and ``info`` are written once it answers, removed when it
    # stops: how ``tlp run`` finds the Prefect server serving its project (flows/prefect_api.py)
    record: tuple[Path, dict] | None = None


def _tool(name: str) -> str:
    """A console script of this environment (next to the running interpreter) or on PATH."""
    local = Path(sys.executable).parent / name
    return str(local) if local.exists() else (shutil.which(name) or name)


def mlflow_ui_service(tracking_uri: str, port: int) -> Service:
    """``mlflow ui`` on the project's store; a remote http(s) store already has its own UI."""
    argv = [_tool("mlflow"), "ui", "--backend-store-uri", tracking_uri]
    argv += ["--host", HOST, "--port", str(port)]
    return Service("mlflow-ui", argv, f"http://{HOST}:{port}/health")


def mlflow_server_service(
    backend_store_uri: str, artifacts: str, port: int, basic_auth: bool = False
) -> Service:
    """An MLflow tracking server that serves artifacts itself, so clients need no S3 keys."""
    argv = [_tool("mlflow"), "server", "--backend-store-uri", backend_store_uri]
    argv += ["--artifacts-destination", artifacts, "--serve-artifacts"]
    argv += ["--host", HOST, "--port", str(port)]
    env = {}
    if basic_auth:
        argv += ["--app-name", "basic-auth"]
        if not os.environ.get("MLFLOW_FLASK_SERVER_SECRET_KEY"):  # CSRF key; one server only
            import secrets

            env["MLFLOW_FLASK_SERVER_SECRET_KEY"] = secrets.token_urlsafe(32)
    return Service("mlflow", argv, f"http://{HOST}:{port}/health", env)


def prefect_server_service(
    port: int, database_url: str | None = None, record: tuple[Path, dict] | None = None
) -> Service:
    """``prefect server start``: SQLite under PREFECT_HOME unless a database URL is given
    (``tlp server`` gives the project's, flows/prefect_api.py, and a ``record`` so that
    ``tlp run`` in the project uses this server)."""
    env = {
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_UI_API_URL": f"http://{HOST}:{port}/api",
    }
    if database_url:
        env["PREFECT_API_DATABASE_CONNECTION_URL"] = database_url
    argv = [_tool("prefect"), "server", "start", "--host", HOST, "--port", str(port)]
    return Service("prefect", argv, f"http://{HOST}:{port}/api/health", env, record)


def start(service: Service, log_dir: Path | None = None) -> subprocess.Popen:
    """Start one server in its own process group (so stopping it stops its workers too)."""
    env = {**os.environ, **service.env}
    out = None
    if log_dir is not None:
        log_dir.mkdir(parents=True, exist_ok=True)
        out = (log_dir / f"{service.name}.log").open("ab")
    return subprocess.Popen(
        service.argv,
        env=env,
        stdout=out,
        stderr=subprocess.STDOUT if out else None,
        start_new_session=True,
    )


def wait_healthy(service: Service, proc: subprocess.Popen, timeout: float = 120.0) -> None:
    """Poll the health URL until it answers 200; a server that dies or hangs is an error."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{service.name} exited with code {proc.returncode} at start-up")
        try:
            with urllib.request.urlopen(service.health_url, timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"{service.name} did not answer {service.health_url} in {timeout:.0f} s")


def stop(procs: Sequence[subprocess.Popen], timeout: float = 8.0) -> None:
    """SIGTERM each server's process group, then SIGKILL what is left after ``timeout``
    (servers such as ``mlflow ui`` leave helper processes behind in their group)."""
    for proc in procs:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for proc in procs:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(max(deadline - time.monotonic(), 0.1))
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def write_record(service: Service, proc: subprocess.Popen) -> None:
    if service.record is None:
        return
    path, info = service.record
    with contextlib.suppress(OSError):
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({**info, "pid": proc.pid}))
        tmp.replace(path)  # a run never reads half a record


def remove_record(service: Service, proc: subprocess.Popen) -> None:
    """The record goes with its server (only if it is still this server's)."""
    if service.record is None:
        return
    path = service.record[0]
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
        if json.loads(path.read_text())["pid"] == proc.pid:
            path.unlink()


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def supervise(services: Sequence[Service], log_dir: Path | None = None) -> int:
    """Start every service, print where they are, run until one exits or Ctrl-C / SIGTERM."""
    procs: list[subprocess.Popen] = []
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        for service in services:
            proc = start(service, log_dir)
            procs.append(proc)
            wait_healthy(service, proc)
            write_record(service, proc)
            base = service.health_url.rsplit("/health", 1)[0].removesuffix("/api")
            print(f"  {service.name:<10} {base}", flush=True)
        print("Press Ctrl-C to stop.", flush=True)
        while all(p.poll() is None for p in procs):
            time.sleep(0.5)
        failed = next(s.name for s, p in zip(services, procs, strict=False) if p.poll() is not None)
        print(f"tlp: {failed} stopped; stopping the others", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        for service, proc in zip(services, procs, strict=False):
            remove_record(service, proc)
        stop(procs)
        signal.signal(signal.SIGTERM, previous)
