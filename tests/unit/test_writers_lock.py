"""Every command that writes project state holds the project's run lock: beside a run (here a
process holding the lock) it stops at once with one line and exit 3, or queues with --wait."""

from __future__ import annotations

import subprocess
import time

import pytest

from flows.cli import main
from tests.lock_support import hold_lock


def _hold(project, seconds: float) -> subprocess.Popen:
    return hold_lock(project, seconds, "tlp run")


@pytest.fixture
def project(tmp_path, project_root):
    (tmp_path / "params.yaml").write_text((project_root / "params.yaml").read_text())
    return tmp_path


WRITERS = {
    "params": ["params", "--profile", "smoke", "--set", "base.seed=12"],
    "validate": ["validate", "--profile", "smoke"],
    "stage": ["stage", "prepare"],
    "promote": ["promote", "tlp-digits", "2", "--reason", "test"],
    "rollback": ["rollback", "tlp-digits"],
}


@pytest.mark.parametrize("argv", WRITERS.values(), ids=WRITERS.keys())
def test_a_writer_beside_a_run_stops_at_once_naming_the_holder(project, argv, capsys):
    holder = _hold(project, 60)
    try:
        started = time.monotonic()
        assert main(["-C", str(project), *argv]) == 3
        assert time.monotonic() - started < 10  # stopped, not queued
    finally:
        holder.kill()
        holder.wait()
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"tlp: {argv[0]} stopped: ")
    assert f"pid {holder.pid}" in lines[0] and "(tlp run)" in lines[0] and "--wait" in lines[0]
    assert not (project / "params.resolved.yaml").exists()  # nothing was written
    assert not (project / "data").exists()


def test_params_with_wait_queues_behind_the_run_then_writes(project, capsys):
    holder = _hold(project, 2)
    started = time.monotonic()
    assert main(["-C", str(project), "params", "--wait", "60", "--set", "base.seed=12"]) == 0
    assert time.monotonic() - started >= 1.0  # it waited for the holder to let go
    holder.wait(10)
    assert "seed: 12" in (project / "params.resolved.yaml").read_text()
    assert "written to" in capsys.readouterr().err


def test_reproduce_reads_the_project_under_its_lock(project, tmp_path_factory):
    from tasks.core.locking import RunLockBusy
    from tasks.registry.lineage import reproduce

    holder = _hold(project, 60)
    try:
        with pytest.raises(RunLockBusy, match=f"pid {holder.pid}"):
            reproduce("tlp-digits@champion", project, tmp_path_factory.mktemp("r") / "work")
    finally:
        holder.kill()
        holder.wait()


def test_the_holder_names_its_command(project):
    from tasks.core.locking import lock_path, read_holder

    assert main(["-C", str(project), "params", "--set", "base.seed=3"]) == 0
    assert read_holder(lock_path(project))["what"] == "tlp params"


def _sigterm_self() -> int:
    import os
    import signal

    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(5)  # the handler raises here
    return 0


def _prefect_termination() -> int:
    from prefect.exceptions import TerminationSignal

    raise TerminationSignal(15)  # what Prefect's own handler raises inside a flow


@pytest.mark.parametrize("call", [_sigterm_self, _prefect_termination])
def test_sigterm_unwinds_the_command_and_exits_143(tmp_path, call, capsys):
    import signal

    from flows.cli.errors import run_command

    before = signal.getsignal(signal.SIGTERM)
    assert run_command("run", call, tmp_path, False, []) == 143
    assert capsys.readouterr().err.strip().splitlines() == ["tlp: terminated (SIGTERM)"]
    assert signal.getsignal(signal.SIGTERM) is before  # restored after the command
