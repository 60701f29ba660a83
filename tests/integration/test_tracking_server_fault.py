"""A real `mlflow server` (SQLite backend, 127.0.0.1, started by the test) is killed after a
new version is logged and before the alias moves: @champion must stay where it was, and
the promotion must fail with a clear message after bounded retries."""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import pytest

from flows.promote import gate_and_promote
from tasks.registry import aliases, publishing
from tasks.registry.retries import RegistryUnavailable
from tests.registry_support import (
    MODEL,
    free_port,
    gate_params,
    open_store,
    register,
    start_process,
    stop_process,
    wait_http,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def start_server(base: Path, port: int, log: str):
    args = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port)]
    args += ["--backend-store-uri", f"sqlite:///{base}/server.db", "--workers", "1"]
    args += ["--artifacts-destination", str(base / "server-artifacts")]
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    proc = start_process(args, env, base / log)
    wait_http(f"http://127.0.0.1:{port}/health", proc, base / log)
    return proc


def test_server_killed_mid_registration_leaves_the_champion(gate_candidates, tmp_path, monkeypatch):
    # the MLflow client's own HTTP retries are cut short: our retries (with backoff) decide
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    project, port = tmp_path / "project", free_port()
    shutil.copytree(gate_candidates.project, project)
    uri = f"http://127.0.0.1:{port}"
    server = start_server(tmp_path, port, "server-1.log")
    try:
        exp = open_store(uri, project)
        first = register(gate_candidates.weak, project, exp)
        aliases.move_champion(project, MODEL, first, None, "manual-promote", "baseline")
        candidate = register(gate_candidates.strong, project, exp)  # logged and registered
    finally:
        stop_process(server)  # the tracking server dies before the gate moves the alias

    params = gate_params(retries=2, retry_delay=0.2)
    started = time.monotonic()
    with pytest.raises(RegistryUnavailable, match="unreachable after 3 attempt"):
        gate_and_promote(project, params, MODEL, candidate)
    with pytest.raises(RegistryUnavailable, match="@champion"):
        aliases.move_champion(
            project, MODEL, candidate, first, "gate-promote", "x", retries=1, delay=0.1
        )
    assert time.monotonic() - started < 60  # bounded: retries, then a clear failure

    server = start_server(tmp_path, port, "server-2.log")
    try:
        assert aliases.alias_version(MODEL, "champion") == first
        assert "champion" not in publishing.version_aliases(MODEL, candidate)
        # once the server is back, the same promotion goes through
        downloads = tmp_path / "downloads"
        downloads.mkdir()
        monkeypatch.setattr(tempfile, "tempdir", str(downloads))
        assert gate_and_promote(project, params, MODEL, candidate)["promoted"]
        assert list(downloads.iterdir()) == []  # the two models it scored were removed after
        assert aliases.alias_version(MODEL, "champion") == candidate
    finally:
        stop_process(server)
