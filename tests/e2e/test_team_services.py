"""The team setup on real services, loopback only: PostgreSQL backing an ``mlflow server``
(basic auth, artifacts on S3) and a ``prefect server``; moto's S3 server as the MLflow
artifact store and the DVC remote. ``tlp serve`` creates a scheduled deployment whose
upcoming runs are listed; the ``smoke`` deployment of infra/prefect.yaml, triggered, is
picked up by a process-pool worker and runs the pipeline end to end against them."""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from flows.servers import mlflow_server_service, prefect_server_service, start, stop
from tests.conftest import make_dvc_project
from tests.services import free_port, moto_s3, postgres_cluster, wait_http

pytestmark = [pytest.mark.slow, pytest.mark.integration]

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
# Tiny training: this checks the services, not model quality, so the promotion gate's
# absolute minimum is lifted for it (a first version is then promoted to @champion).
TINY = ["data.source.limit=300", "pretrain.epochs=1", "transfer.epochs=2", "promote.min_accuracy=0"]
MODEL = "tlp-uci-digits"


@pytest.fixture(scope="module")
def team(tmp_path_factory):
    """Postgres, moto S3, MLflow server (basic auth) and Prefect server; all stopped after."""
    logs = tmp_path_factory.mktemp("service-logs")
    procs = []
    with postgres_cluster() as pg, moto_s3(["mlflow-artifacts", "dvc"], logs) as s3:
        for db in ("mlflow", "prefect"):
            pg.create_database(db)
        user, password = "tlp-admin", secrets.token_urlsafe(12)
        auth_ini = logs / "basic_auth.ini"
        auth_ini.write_text(
            "[mlflow]\ndefault_permission = READ\n"
            f"database_uri = sqlite:///{logs / 'basic_auth.db'}\n"
            "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
        )
        mlflow_port, prefect_port = free_port(), free_port()
        mlflow = mlflow_server_service(
            pg.url("mlflow", "postgresql+psycopg"),
            "s3://mlflow-artifacts",
            mlflow_port,
            basic_auth=True,
        )
        mlflow.env.update(s3.env)
        mlflow.env.update(
            MLFLOW_S3_ENDPOINT_URL=s3.endpoint,
            MLFLOW_AUTH_CONFIG_PATH=str(auth_ini),
            MLFLOW_AUTH_ADMIN_USERNAME=user,
            MLFLOW_AUTH_ADMIN_PASSWORD=password,
            MLFLOW_FLASK_SERVER_SECRET_KEY=secrets.token_urlsafe(24),
        )
        prefect = prefect_server_service(prefect_port, pg.url("prefect", "postgresql+asyncpg"))
        prefect.env.update(
            PREFECT_HOME=str(tmp_path_factory.mktemp("prefect-home")),
            PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS="2",
        )
        try:
            for service in (mlflow, prefect):
                proc = start(service, logs)
                procs.append(proc)
            for service, proc in zip((mlflow, prefect), procs, strict=True):
                wait_http(service.health_url, proc, service.name, 180)
            yield {
                "pg": pg,
                "s3": s3,
                "logs": logs,
                "mlflow_url": f"http://127.0.0.1:{mlflow_port}",
                "prefect_api": f"http://127.0.0.1:{prefect_port}/api",
                "mlflow_user": user,
                "mlflow_password": password,
            }
        finally:
            stop(procs)


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    project = make_dvc_project(tmp_path_factory.mktemp("team"))
    shutil.copytree(ROOT / "flows", project / "flows", ignore=shutil.ignore_patterns("__pycache__"))
    return project


def _client_env(team, **extra: str) -> dict[str, str]:
    env = {**os.environ, **team["s3"].env, "PREFECT_API_URL": team["prefect_api"]}
    env.update(
        PREFECT_HOME=str(team["logs"] / "client-prefect-home"),
        TLP_TRACKING_URI=team["mlflow_url"],
        MLFLOW_TRACKING_USERNAME=team["mlflow_user"],
        MLFLOW_TRACKING_PASSWORD=team["mlflow_password"],
        TLP_DVC_REMOTE="s3://dvc/tlp",
        TLP_DVC_REMOTE_ENDPOINT=team["s3"].endpoint,
    )
    env.update(extra)
    return env


@contextmanager
def prefect_client(team):
    """A sync Prefect client for the test's own server."""
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with (
        temporary_settings({PREFECT_API_URL: team["prefect_api"]}),
        get_client(sync_client=True) as client,
    ):
        yield client


def _wait(predicate, timeout: float, what: str, interval: float = 1.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError(f"timed out waiting for {what}")


def test_mlflow_server_requires_basic_auth(team):
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(f"{team['mlflow_url']}/api/2.0/mlflow/experiments/search")
    assert err.value.code == 401


def test_tlp_serve_creates_a_scheduled_deployment_with_upcoming_runs(team, project):
    from prefect.client.schemas.filters import (
        DeploymentFilter,
        DeploymentFilterId,
        FlowRunFilter,
        FlowRunFilterState,
        FlowRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType
    from prefect.client.schemas.sorting import FlowRunSort

    argv = [str(BIN / "tlp"), "-C", str(project), "serve", "--set", "schedule.cron=15 3 * * *"]
    argv += ["--set", "schedule.timezone=Europe/Berlin"]
    log = (team["logs"] / "serve.log").open("wb")
    proc = subprocess.Popen(
        argv, env=_client_env(team), stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    try:
        with prefect_client(team) as client:

            def deployment():
                try:
                    return client.read_deployment_by_name("transfer_pipeline/scheduled")
                except Exception:
                    assert proc.poll() is None, (team["logs"] / "serve.log").read_text()[-3000:]
                    return None

            dep = _wait(deployment, 120, "the served deployment")
            schedule = dep.schedules[0].schedule
            assert schedule.cron == "15 3 * * *" and schedule.timezone == "Europe/Berlin"
            assert dep.global_concurrency_limit.limit == 1
            assert dep.concurrency_options.collision_strategy == "ENQUEUE"

            def upcoming():
                runs = client.read_flow_runs(
                    deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[dep.id])),
                    flow_run_filter=FlowRunFilter(
                        state=FlowRunFilterState(
                            type=FlowRunFilterStateType(any_=[StateType.SCHEDULED])
                        )
                    ),
                    sort=FlowRunSort.EXPECTED_START_TIME_ASC,
                    limit=10,
                )
                return runs if len(runs) >= 3 else None

            runs = _wait(upcoming, 90, "scheduled runs")
            for run in runs:
                local = run.expected_start_time.astimezone(ZoneInfo("Europe/Berlin"))
                assert (local.hour, local.minute) == (3, 15)
                assert run.expected_start_time.timestamp() > time.time()
            print("upcoming runs:", sorted(r.expected_start_time.isoformat() for r in runs))
            proc.send_signal(signal.SIGINT)
            proc.wait(240)  # the runner pauses the schedule on its way out
            # a served schedule pauses when the process stops (pause_on_shutdown)
            paused = client.read_deployment(dep.id)
            assert paused.paused is True
    finally:
        if proc.poll() is None:
            stop([proc])
        log.close()


def test_worker_runs_the_triggered_smoke_deployment_end_to_end(team, project, monkeypatch):
    from mlflow import MlflowClient

    env = _client_env(team, TLP_PROJECT_DIR=str(project))
    prefect = str(BIN / "prefect")

    def cli(*args: str) -> str:
        done = subprocess.run(
            [prefect, *args], env=env, cwd=project, capture_output=True, text=True, timeout=300
        )
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
        return done.stdout

    cli("work-pool", "create", "tlp-process", "--type", "process")
    deploy = subprocess.run(
        [prefect, "--no-prompt", "deploy", "--prefect-file", str(ROOT / "infra" / "prefect.yaml"),
         "--name", "smoke"], env=env, cwd=project, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    if deploy.returncode != 0:
        # Known upstream fault of the pinned prefect 3.8.8 + fastapi 0.154: after creating the
        # deployment, the CLI asks for the pool's online workers with `limit: null`, which the
        # server rejects (422). Only that exact failure is tolerated (README: Running for a team).
        assert "workers/filter" in deploy.stderr and "422" in deploy.stderr, deploy.stderr[-3000:]
        assert "Deployment 'transfer_pipeline/smoke' successfully created" in deploy.stdout
    with prefect_client(team) as client:
        dep = client.read_deployment_by_name("transfer_pipeline/smoke")
        assert dep.work_pool_name == "tlp-process" and dep.global_concurrency_limit.limit == 1
        run = client.create_flow_run_from_deployment(dep.id, parameters={"overrides": TINY})
        log = (team["logs"] / "worker.log").open("wb")
        worker = subprocess.Popen(
            [prefect, "worker", "start", "--pool", "tlp-process", "--type", "process"],
            env=env,
            cwd=team["logs"],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:

            def finished():
                state = client.read_flow_run(run.id).state
                return state if state is not None and state.is_final() else None

            state = _wait(finished, 480, "the flow run to finish", 2)
        finally:
            stop([worker])
            log.close()
        worker_log = (team["logs"] / "worker.log").read_text()
        assert state.is_completed(), f"{state.name}: {state.message}\n{worker_log[-4000:]}"
        assert "database is locked" not in worker_log

    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", team["mlflow_user"])
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", team["mlflow_password"])
    for key, value in team["s3"].env.items():
        monkeypatch.setenv(key, value)
    mlflow = MlflowClient(tracking_uri=team["mlflow_url"], registry_uri=team["mlflow_url"])
    version = mlflow.get_model_version_by_alias(MODEL, "champion")
    assert version.tags["prefect_flow_run_id"] == str(run.id)
    parent = mlflow.get_run(version.tags["mlflow_parent_run_id"])
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["registered_version"] == version.version
    assert "test_accuracy" in parent.data.metrics  # the registered candidate's
    # artifacts went through the MLflow server to S3; the DVC remote is the S3 bucket
    assert team["s3"].keys("mlflow-artifacts")
    dvc_keys = team["s3"].keys("dvc")
    assert dvc_keys and all(k.startswith("tlp/") for k in dvc_keys)
    from dvc.repo import Repo

    with Repo(str(project)) as repo:
        assert repo.status(cloud=True) == {}
