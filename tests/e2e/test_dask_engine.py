"""Candidates on a real Dask cluster started here on 127.0.0.1 (a scheduler and two workers,
no dashboards), with a worker killed (SIGKILL) while it trains a candidate: the scheduler
reruns that candidate on the other worker, the run registers a version holding both
candidates, and the killed attempt's MLflow run is FAILED, not left RUNNING."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import make_dvc_project

pytestmark = [pytest.mark.slow, pytest.mark.integration]

SLOW_MACHINE = {"PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "180"}
TINY = ["data.source.limit=300", "pretrain.epochs=1", "transfer.epochs=2"]
CANDIDATES = ("scratch", "linear_probe")


def _spawn(argv: list[str], env: dict, log: Path) -> subprocess.Popen:
    """A process in its own group (stopped with its children), output to ``log``."""
    with log.open("w") as out:
        return subprocess.Popen(
            argv, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)


@pytest.fixture
def dask_cluster(tmp_path):
    """A scheduler on a free port of 127.0.0.1 and two one-thread workers without nannies
    (a killed worker stays dead); yields the scheduler file; every process is killed after."""
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "worker-prefect-home")}
    scheduler_file = tmp_path / "scheduler.json"
    cli = [sys.executable, "-m"]
    procs = [
        _spawn(
            [
                *cli,
                "distributed.cli.dask_scheduler",
                "--host",
                "127.0.0.1",
                "--port",
                "0",
                "--no-dashboard",
                "--scheduler-file",
                str(scheduler_file),
            ],
            env,
            tmp_path / "scheduler.log",
        )
    ]
    try:
        deadline = time.monotonic() + 60
        while not scheduler_file.is_file() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert scheduler_file.is_file(), (tmp_path / "scheduler.log").read_text()
        for i in range(2):
            procs.append(
                _spawn(
                    [
                        *cli,
                        "distributed.cli.dask_worker",
                        "--scheduler-file",
                        str(scheduler_file),
                        "--host",
                        "127.0.0.1",
                        "--nthreads",
                        "1",
                        "--no-nanny",
                        "--no-dashboard",
                    ],
                    env,
                    tmp_path / f"worker{i}.log",
                )
            )
        yield scheduler_file
    finally:
        for proc in reversed(procs):
            _stop(proc)


def _training_pids(project: Path) -> list[int]:
    """The processes (tag tlp.pid) of candidate MLflow runs RUNNING now; none before the
    store exists."""
    query = (
        "select t.value from runs r join tags t on t.run_uuid = r.run_uuid "
        "where r.name like 'transfer/%' and r.status = 'RUNNING' and t.key = 'tlp.pid'"
    )
    try:
        with sqlite3.connect(f"file:{project / 'mlflow.db'}?mode=ro", uri=True, timeout=5) as db:
            return [int(row[0]) for row in db.execute(query)]
    except sqlite3.Error:
        return []


def _kill_a_training_worker(client, project: Path, tlp: subprocess.Popen) -> int:
    """SIGKILL a cluster worker once the candidate it trains has opened its MLflow run."""
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and tlp.poll() is None:
        workers = set(client.run(os.getpid).values())
        training = [pid for pid in _training_pids(project) if pid in workers]
        if training:
            os.kill(training[0], signal.SIGKILL)
            return training[0]
        time.sleep(0.2)
    raise AssertionError("no candidate started training on the cluster")


def test_candidates_on_a_dask_cluster_survive_a_killed_worker(dask_cluster, tmp_path):
    from distributed import Client

    from flows.candidates import ensure_distributed_config

    ensure_distributed_config()  # the suite's earlier tests may have reset dask's config
    project = make_dvc_project(tmp_path)
    address = json.loads(dask_cluster.read_text())["address"]
    argv = [str(Path(sys.executable).parent / "tlp"), "-C", str(project), "run"]
    argv += ["--profile", "smoke", *[a for s in TINY for a in ("--set", s)]]
    argv += ["--set", f"transfer.strategies=[{','.join(CANDIDATES)}]"]
    argv += ["--set", "engine.runner=dask", "--set", f"engine.address={address}"]
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect-home"), **SLOW_MACHINE}
    env.pop("PREFECT_API_URL", None)
    tlp = _spawn(argv, env, tmp_path / "tlp.log")
    try:
        with Client(scheduler_file=str(dask_cluster), timeout=60) as client:
            client.wait_for_workers(2, timeout=120)
            _kill_a_training_worker(client, project, tlp)
        code = tlp.wait(timeout=600)
    finally:
        _stop(tlp)
    out = (tmp_path / "tlp.log").read_text()
    assert code == 0, out[-3000:]

    summary = json.loads((project / "reports" / "summary.json").read_text())
    assert summary["engine"] == {"runner": "dask", "address": address}
    assert set(summary["candidates"]) == set(CANDIDATES)
    assert summary["version"], summary
    for name in CANDIDATES:
        assert (project / "models" / "candidates" / name).is_dir()
    with sqlite3.connect(project / "mlflow.db") as db:
        runs = db.execute("select name, status from runs").fetchall()
    assert not [r for r in runs if r[1] == "RUNNING"], runs
    trained = [name for name, status in runs if name.startswith("transfer/")]
    failed = [name for name, status in runs if name.startswith("transfer/") and status == "FAILED"]
    assert len(failed) == 1, runs  # the killed attempt, ended by the flow
    assert sorted(set(trained)) == sorted(f"transfer/{n}" for n in CANDIDATES)
