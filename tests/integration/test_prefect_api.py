"""tlp run's temporary Prefect API: launched first, used by the flow, gone after the run."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

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


SERVED = """
import sys
from pathlib import Path
from flows import prefect_api
api = prefect_api.start_early(Path(sys.argv[1]))
assert isinstance(api, prefect_api.RunningServer), api  # nothing launched
from prefect import flow
from prefect.settings import PREFECT_API_URL, PREFECT_UI_URL
with prefect_api.use(api):
    assert PREFECT_API_URL.value() == sys.argv[2], PREFECT_API_URL.value()
    assert PREFECT_UI_URL.value() == sys.argv[2].removesuffix("/api")
    print(flow(name="served")(lambda: 42)())
"""


def _record(project, pid: int, port: int, database: str | None = None) -> None:
    from flows.servers import Service, write_record

    found = prefect_api.server_record(project, port, database or "sqlite:///elsewhere.db")
    service = Service("prefect", [], "", record=found)
    write_record(service, type("Proc", (), {"pid": pid})())


def test_a_run_uses_the_server_serving_the_project(tmp_path, monkeypatch):
    """A server recorded as serving the project (``tlp server``; here the same Prefect API
    app, on the project's database) is used: no temporary API starts, and the flow run is
    stored in that server's database. Its record is left in place."""
    for key in prefect_api.USER_CHOICES + ("PREFECT_PROFILES_PATH", "PREFECT_PROFILE"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("PREFECT_PROFILES_PATH", str(tmp_path / "profiles.toml"))
    project = tmp_path / "project"
    project.mkdir()
    server = prefect_api.TemporaryApi(project)
    server.launch()
    try:
        server.wait_until_up(180)
        (project / prefect_api.PID_FILE).unlink()  # a server, not a run's temporary API
        _record(project, server.process.pid, server.port, prefect_api.project_database_url(project))
        out = subprocess.run(
            [sys.executable, "-c", SERVED, str(project), server.api_url],
            env={**os.environ},
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert out.returncode == 0, out.stderr
        assert out.stdout.split()[-1] == "42"
        assert not (project / prefect_api.PID_FILE).exists()  # no temporary API was started
        import sqlite3

        db = sqlite3.connect(project / ".tlp" / "prefect" / "prefect.db")
        joined = "select f.name from flow_run r join flow f on f.id = r.flow_id"
        names = [row[0] for row in db.execute(joined)]
        db.close()
        assert names == ["served"]
        assert (project / prefect_api.SERVER_RECORD).is_file()
    finally:
        server.stop()


def test_a_stale_server_record_is_ignored(tmp_path, monkeypatch):
    """A dead pid, or a live process that is no server on that port, is removed and the run
    starts its own API; a live server of another database is not used."""
    for key in prefect_api.USER_CHOICES + ("PREFECT_PROFILE",):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("PREFECT_PROFILES_PATH", str(tmp_path / "profiles.toml"))
    record = tmp_path / prefect_api.SERVER_RECORD
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    _record(tmp_path, dead.pid, 4200, prefect_api.project_database_url(tmp_path))
    assert prefect_api.serving_server(tmp_path) is None and not record.exists()
    _record(tmp_path, os.getpid(), 4200, prefect_api.project_database_url(tmp_path))
    assert prefect_api.serving_server(tmp_path) is None and not record.exists()  # not a server
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "--port", "1"])
    try:
        while b"--port" not in Path(f"/proc/{other.pid}/cmdline").read_bytes():
            time.sleep(0.01)  # until it has exec'd
        _record(tmp_path, other.pid, 1)  # another project's database
        assert prefect_api.serving_server(tmp_path) is None and record.exists()
        _record(tmp_path, other.pid, 1, prefect_api.project_database_url(tmp_path))
        assert prefect_api.serving_server(tmp_path) is None  # does not answer: not used
        from flows.servers import Service, remove_record

        service = Service("prefect", [], "", record=(record, {}))
        remove_record(service, type("Proc", (), {"pid": other.pid + 1})())
        assert record.exists()  # another server's record: left to it
        remove_record(service, other)
        assert not record.exists()  # its server stopped
        _record(tmp_path, other.pid, 1, prefect_api.project_database_url(tmp_path))
        record.write_text("{not json")
        assert prefect_api.serving_server(tmp_path) is None and not record.exists()
    finally:
        other.kill()
        other.wait()
