"""Where candidates train (flows/candidates.py), decided without starting a cluster: in this
process, a LocalCluster never larger than the work, or the cluster at engine.address; a
scheduler that does not answer, or a remote one that could not report to a loopback Prefect
API, refused before any work; a lost worker said in words."""

from __future__ import annotations

import socket

import pytest

from flows.candidates import EnginePlan, _cause, check_engine, engine_plan, task_runner
from tasks.core.params import resolve_params
from tasks.stages.preflight import PreflightError
from tests.conftest import ROOT


def _params(*sets: str):
    return resolve_params(ROOT / "params.yaml", "smoke", list(sets))


def test_one_worker_trains_in_this_process_and_a_pool_is_never_larger_than_the_work():
    assert engine_plan(_params("engine.workers=1"), 4) == EnginePlan("in_process", workers=1)
    assert engine_plan(_params("engine.workers=3"), 1).runner == "in_process"
    plan = engine_plan(_params("engine.workers=8"), 3)
    assert plan == EnginePlan("local", workers=3)
    assert plan.summary() == {"runner": "local", "workers": 3}
    runner = task_runner(plan, retries=1)
    assert runner.cluster_class == "distributed.LocalCluster"
    assert runner.cluster_kwargs == {
        "n_workers": 3,
        "threads_per_worker": 1,
        "processes": True,
        "host": "127.0.0.1",
        "dashboard_address": None,
    }


def test_dask_uses_the_address_and_refuses_one_that_does_not_answer():
    with socket.socket() as listening:
        listening.bind(("127.0.0.1", 0))
        listening.listen()
        address = f"tcp://127.0.0.1:{listening.getsockname()[1]}"
        params = _params("engine.runner=dask", f"engine.address={address}")
        plan = engine_plan(params, 2)
        assert plan.summary() == {"runner": "dask", "address": address}
        assert task_runner(plan, retries=1).address == address
        check_engine(params)  # it answers
    with pytest.raises(PreflightError, match=r"engine.address: no Dask scheduler answers at"):
        check_engine(params)  # closed now


def test_a_remote_cluster_cannot_report_to_a_loopback_prefect_api():
    from prefect.settings import PREFECT_API_URL, temporary_settings

    params = _params("engine.runner=dask", "engine.address=tcp://10.0.0.5:8786")
    api = {PREFECT_API_URL: "http://127.0.0.1:4200/api"}
    refused = pytest.raises(PreflightError, match="cannot reach this run's Prefect API")
    with temporary_settings(api), refused:
        check_engine(params)


def test_a_lost_worker_is_said_in_words():
    from distributed import KilledWorker

    lost = KilledWorker("train_on_worker-1", "tcp://127.0.0.1:1", allowed_failures=1)
    assert _cause(lost, 1) == "its worker died (KilledWorker) after 1 retry"
    assert _cause(lost, 0) == "its worker died (KilledWorker) after 0 retries"
    assert _cause(ValueError("bad"), 1) == "ValueError: bad"


def test_local_workers_keep_glibcs_adaptive_malloc():
    """Dask's nannies set MALLOC_TRIM_THRESHOLD_, which made training in a worker 1.5-2.5x
    slower than in the flow's process; tlp's local workers get Dask's environment without it."""
    import dask

    from flows.candidates import MALLOC_TRIM_KEY, _worker_environ, ensure_distributed_config

    ensure_distributed_config()
    assert MALLOC_TRIM_KEY in dask.config.get("distributed.nanny.pre-spawn-environ")
    environ = _worker_environ()
    assert MALLOC_TRIM_KEY not in environ
    assert environ["OMP_NUM_THREADS"] == 1  # the rest of Dask's environment is kept
