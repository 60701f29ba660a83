"""The project run lock across real processes: the second holder waits or stops clearly."""

from __future__ import annotations

import subprocess
import time

import pytest

from tasks.core.locking import RunLockBusy, lock_path, read_holder, run_lock
from tests.lock_support import hold_lock


def _hold(project, seconds: float) -> subprocess.Popen:
    return hold_lock(project, seconds, "holder")


def test_second_holder_stops_with_a_message_naming_the_first(tmp_path):
    proc = _hold(tmp_path, 30)
    try:
        with pytest.raises(RunLockBusy) as err, run_lock(tmp_path):
            pass
        message = str(err.value)
        assert f"pid {proc.pid}" in message and "--wait" in message
        assert read_holder(lock_path(tmp_path))["what"] == "holder"
    finally:
        proc.kill()
        proc.wait()


def test_second_holder_waits_until_the_first_ends(tmp_path):
    proc = _hold(tmp_path, 1.5)
    started = time.monotonic()
    with run_lock(tmp_path, wait=30):
        waited = time.monotonic() - started
        assert read_holder(lock_path(tmp_path))["pid"] != proc.pid
    assert 1.0 <= waited < 30  # it got the lock only once the holder let go
    proc.wait(10)


def test_a_killed_holder_leaves_no_stale_lock(tmp_path):
    proc = _hold(tmp_path, 60)
    proc.kill()
    proc.wait()
    with run_lock(tmp_path):
        pass


def test_lock_is_reentrant_within_a_process(tmp_path):
    with run_lock(tmp_path), run_lock(tmp_path):
        pass
    with run_lock(tmp_path):  # released by the outer exit
        pass


def test_wait_that_runs_out_says_so(tmp_path):
    proc = _hold(tmp_path, 30)
    try:
        with pytest.raises(RunLockBusy, match="after waiting 1 s"), run_lock(tmp_path, wait=1):
            pass
    finally:
        proc.kill()
        proc.wait()
