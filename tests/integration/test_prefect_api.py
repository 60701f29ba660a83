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
from pathlib import Path
from flows import prefect_api
api = prefect_api.start_early(Path(sys.argv[1]))
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
    """... and its flow runs are stored in the project, not in the user's ~/.prefect."""
    home, project = tmp_path / "home", tmp_path / "project"
    home.mkdir()
    project.mkdir()
    env = {
        **os.environ,
        "HOME": str(home),  # the user-wide Prefect home is ~/.prefect
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "180",  # a loaded CI machine
    }
    for key in prefect_api.USER_CHOICES + ("PREFECT_PROFILES_PATH", "PREFECT_PROFILE"):
        env.pop(key, None)
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(project)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    answer, pid = out.stdout.split()[-2:]
    assert answer == "42"
    with pytest.raises(ProcessLookupError):  # stopped and reaped when the process exited
        os.kill(int(pid), 0)
    assert "Error logging to API" not in out.stderr  # logs were sent before it stopped
    assert (project / ".tlp" / "prefect" / "prefect.db").stat().st_size > 0
    assert not (home / ".prefect" / "prefect.db").exists()
    assert not (project / prefect_api.PID_FILE).exists()  # removed when it stopped


def test_the_users_own_prefect_choice_wins(tmp_path, monkeypatch):
    for key in prefect_api.USER_CHOICES + ("PREFECT_PROFILE",):
        monkeypatch.delenv(key, raising=False)
    profiles = tmp_path / "profiles.toml"
    monkeypatch.setenv("PREFECT_PROFILES_PATH", str(profiles))
    url = prefect_api.project_database_url(tmp_path)
    assert url == f"sqlite+aiosqlite:///{tmp_path / '.tlp' / 'prefect' / 'prefect.db'}"
    monkeypatch.setenv("PREFECT_HOME", str(tmp_path / "mine"))
    assert prefect_api.project_database_url(tmp_path) is None
    monkeypatch.delenv("PREFECT_HOME")
    profiles.write_text(
        'active = "team"\n[profiles.team]\nPREFECT_API_URL = "http://127.0.0.1:4200/api"\n'
    )
    assert prefect_api.project_database_url(tmp_path) is None  # runs go to that server
    assert prefect_api.project_database_url(tmp_path, server=True) == url  # tlp server's db
    profiles.write_text(
        'active = "pg"\n[profiles.pg]\n'
        'PREFECT_SERVER_DATABASE_CONNECTION_URL = "postgresql+asyncpg://db/prefect"\n'
    )
    assert prefect_api.project_database_url(tmp_path, server=True) is None


def test_an_orphan_server_is_stopped_only_if_it_is_ours(tmp_path):
    """A pid file left by a killed run: a process that is not our server is never killed."""
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        pid_file = tmp_path / prefect_api.PID_FILE
        pid_file.parent.mkdir(parents=True)
        pid_file.write_text(f'{{"pid": {other.pid}, "port": 1}}')
        assert prefect_api.stop_orphan(tmp_path) is None
        assert other.poll() is None and not pid_file.exists()
    finally:
        other.kill()
        other.wait()


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


def test_an_orphan_server_of_ours_is_stopped(tmp_path):
    """The server a ``kill -9``-ed run left (here: launched, then forgotten) is stopped."""
    api = prefect_api.TemporaryApi(tmp_path)
    api.launch()
    process, api.process = api.process, None  # forgotten, as by a process that was killed
    try:
        pid_file = tmp_path / prefect_api.PID_FILE
        recorded = pid_file.read_text()
        pid_file.write_text(recorded.replace('"port": ', '"port": 1'))  # another server's port
        assert prefect_api.stop_orphan(tmp_path) is None and process.poll() is None
        pid_file.write_text(recorded)
        assert prefect_api.stop_orphan(tmp_path) == process.pid
        assert process.wait(timeout=30) is not None
        assert not (tmp_path / prefect_api.PID_FILE).exists()
    finally:
        process.kill()
        process.wait()
        api.stop()
