"""What a killed run left (RUNNING MLflow runs, DVC's unfinished copies) is ended by the next
run, and nothing else is touched: runs of live processes or other hosts, finished objects."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import mlflow
import pytest
from mlflow import MlflowClient

from tasks.core import stale


@pytest.fixture(scope="module")
def sqlite_store(tmp_path_factory):
    """One SQLite store for the module (creating one takes seconds)."""
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path_factory.mktemp('stale') / 'mlflow.db'}")
    yield MlflowClient()
    mlflow.set_tracking_uri(previous)


@pytest.fixture
def store(sqlite_store, request):
    """The store and an experiment of this test's own."""
    return sqlite_store, sqlite_store.create_experiment(request.node.name)


def _dead_process_tags() -> dict[str, str]:
    proc = subprocess.Popen(
        [sys.executable, "-c", "from tasks.core.stale import process_tags; print(process_tags())"],
        stdout=subprocess.PIPE,
        text=True,
    )
    tags = eval(proc.communicate(timeout=30)[0])  # noqa: S307 (a dict repr we printed)
    assert proc.returncode == 0
    return tags


def test_running_runs_of_a_dead_process_are_marked_failed(store):
    client, experiment = store
    killed = client.create_run(experiment, tags=_dead_process_tags()).info.run_id
    alive = client.create_run(experiment, tags=stale.process_tags()).info.run_id
    other_host = {**_dead_process_tags(), stale.HOST_TAG: "elsewhere"}
    remote = client.create_run(experiment, tags=other_host).info.run_id
    untagged = client.create_run(experiment).info.run_id

    assert stale.end_stale_runs([experiment]) == [killed]
    run = client.get_run(killed)
    assert run.info.status == "FAILED" and "clean-up" in run.data.tags[stale.ENDED_TAG]
    for run_id in (alive, remote, untagged):
        assert client.get_run(run_id).info.status == "RUNNING"


def test_a_reused_pid_does_not_keep_a_run_alive(store):
    client, experiment = store
    tags = {**stale.process_tags(), stale.STARTED_TAG: "1.0"}  # our pid, another start time
    run_id = client.create_run(experiment, tags=tags).info.run_id
    assert tags[stale.PID_TAG] == str(os.getpid())
    assert stale.end_stale_runs([experiment]) == []  # this very process: never itself
    tags[stale.PID_TAG] = "1"  # pid 1 lives, but started at another time than the run's
    client.set_tag(run_id, stale.PID_TAG, "1")
    assert stale.end_stale_runs([experiment]) == [run_id]


def test_only_dvcs_unfinished_copies_are_removed(tmp_path):
    objects = tmp_path / "files" / "md5" / "ab"
    objects.mkdir(parents=True)
    partial = objects / ".Abc_def-ghijklmnopqrst.tmp"  # dvc_objects' tmp_fname: 22 chars
    kept = [objects / "cdef0123456789", objects / ".short.tmp", objects / "x.tmp"]
    for path in [partial, *kept]:
        path.write_bytes(b"x")
    assert stale.remove_partial_files(tmp_path, min_age=3600) == []  # too new: may be copying
    old = time.time() - 7200
    os.utime(partial, (old, old))
    assert stale.remove_partial_files(tmp_path, min_age=3600) == [partial]
    assert all(path.exists() for path in kept)
