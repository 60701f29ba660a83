"""tlp run's temporary Prefect API: launched first, used by the flow, gone after the run."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from flows import prefect_api

pytestmark = pytest.mark.integration

SCRIPT = """
import os, sys
from flows import prefect_api
api = prefect_api.start_early()
assert "prefect.server.api.server" not in sys.modules  # the server's code stays out of here
from prefect import flow
from prefect.settings import PREFECT_API_URL
with prefect_api.use(api):
    assert PREFECT_API_URL.value() == api.api_url.rstrip("/"), PREFECT_API_URL.value()
    assert api.api_url.startswith("http://127.0.0.1:")
    print(flow(name="answer")(lambda: 42)())
print(api.process.pid, flush=True)
assert "prefect.server.api.server" not in sys.modules
"""


def test_a_flow_runs_on_the_temporary_api_which_stops_at_exit(tmp_path):
    env = {
        **os.environ,
        "PREFECT_HOME": str(tmp_path / "prefect"),
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "180",  # a loaded CI machine
    }
    env.pop("PREFECT_API_URL", None)
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr
    answer, pid = out.stdout.split()[-2:]
    assert answer == "42"
    with pytest.raises(ProcessLookupError):  # stopped and reaped when the process exited
        os.kill(int(pid), 0)
    assert "Error logging to API" not in out.stderr  # logs were sent before it stopped


def test_a_configured_api_is_used_as_it_is(monkeypatch):
    monkeypatch.setenv("PREFECT_API_URL", "http://127.0.0.1:4200/api")
    assert prefect_api.start_early() is None
    monkeypatch.delenv("PREFECT_API_URL")
    monkeypatch.setenv("TLP_PREFECT_PRESTART", "0")
    assert prefect_api.start_early() is None


def test_a_server_that_dies_is_reported_with_its_output():
    api = prefect_api.TemporaryApi()
    api.process = subprocess.Popen(
        [sys.executable, "-c", "import sys; sys.stderr.write('no database here'); sys.exit(1)"],
        stderr=api._log,
    )
    api.process.wait()
    with pytest.raises(prefect_api.ApiStartFailed, match="exited with code 1: no database here"):
        api.wait_until_up(timeout=10)
    api.stop()
