"""The candidate stages ``transfer@NAME`` that DVC reports stale, trained on the engine.

``train_candidates`` is the one place the flow hands candidates to an executor (``engine``
params). Three ways, chosen by ``engine_plan``:

- ``local`` with one worker: in this process, one after another (the heavy libraries are
  loaded already; no process to start).
- ``local`` with N workers: a Dask ``LocalCluster`` of min(N, candidates) worker processes
  on 127.0.0.1, one thread each (each worker's torch uses ``base.threads``, as the sequential
  run does, so a candidate learns the same either way).
- ``dask``: the running Dask cluster at ``engine.address``; its workers must import tlp and
  see the project at the same path.

Dask, through Prefect's ``DaskTaskRunner`` (prefect-dask), rather than Ray: pure Python, a
scheduler and workers start in seconds, and a task whose worker died is rescheduled on
another worker by the scheduler itself. On the Dask runners each candidate is a Prefect task
``transfer@NAME`` that calls ``tasks.stages.transfer.train_candidate`` in the worker: the
context (params, MLflow store, torch threads) is opened there from params.resolved.yaml, and
the checkpoint is moved into place only when whole, so a killed worker leaves no candidate
half-written. Prefect's settings travel with each task (prefect-dask serialises the
context), so its task run and its log lines reach the API this flow reports to.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import time
from dataclasses import dataclass

from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks.core.context import StageContext
from tasks.stages import StageFailed

log = logging.getLogger(__name__)

CONNECT_TIMEOUT = 5.0  # seconds for the scheduler to accept a connection
ENDED_TAG = "tlp.ended_by"  # as tasks/core/stale.py tags the runs it ends


class CandidateFailed(StageFailed):
    """A candidate that failed on the engine, after its retries; the flow stops with it."""


@dataclass(frozen=True)
class EnginePlan:
    """Where the candidates of one run train: ``in_process``, ``local`` (a LocalCluster of
    ``workers`` processes) or ``dask`` (the cluster at ``address``)."""

    runner: str
    workers: int | None = None
    address: str | None = None

    def summary(self) -> dict:
        """What reports/summary.json records of the engine."""
        shown = {"runner": self.runner}
        if self.workers is not None:
            shown["workers"] = self.workers
        if self.address is not None:
            shown["address"] = self.address
        return shown


def check_engine(params) -> None:
    """Before any stage: with ``engine.runner: dask``, refuse (exit 2, one line) a scheduler
    that does not answer, and a remote cluster whose workers could not report to this run's
    Prefect API (one on this machine's loopback: a temporary API, or ``tlp server``)."""
    from urllib.parse import urlparse

    from prefect.settings import PREFECT_API_URL

    from tasks.stages.preflight import PreflightError

    address = params.engine.address
    if params.engine.runner != "dask" or address.startswith("inproc://"):
        return
    where = urlparse(address)
    api = str(PREFECT_API_URL.value() or "")
    if not _loopback(where.hostname) and _loopback(urlparse(api).hostname):
        raise PreflightError(
            f"engine.address: the workers of {address} cannot reach this run's Prefect API "
            f"at {api} (this machine only); set PREFECT_API_URL to a Prefect server they reach"
        )
    try:
        socket.create_connection((where.hostname, where.port), timeout=CONNECT_TIMEOUT).close()
    except (OSError, TypeError, ValueError) as exc:
        raise PreflightError(
            f"engine.address: no Dask scheduler answers at {address} "
            f"({getattr(exc, 'strerror', None) or exc}); start one (`dask scheduler`) or fix "
            "engine.address"
        ) from None


def _loopback(host: str | None) -> bool:
    if not host:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def engine_plan(params, candidates: int) -> EnginePlan:
    """The engine for ``candidates`` candidates: a pool is never larger than the work."""
    engine = params.engine
    if engine.runner == "dask":
        return EnginePlan("dask", address=engine.address)
    workers = min(engine.local_workers(params.base.threads), candidates)
    if workers <= 1:
        return EnginePlan("in_process", workers=1)
    return EnginePlan("local", workers=workers)


def task_runner(plan: EnginePlan, retries: int):
    """prefect-dask's runner for ``plan``: a LocalCluster of worker processes on 127.0.0.1
    (no dashboard) whose scheduler reruns a lost worker's candidate ``retries`` times, or
    the cluster at the plan's address (its scheduler's ``allowed-failures`` decides)."""
    from prefect_dask import DaskTaskRunner

    if plan.runner == "dask":
        return DaskTaskRunner(address=plan.address)
    return DaskTaskRunner(
        cluster_class="distributed.LocalCluster",
        cluster_kwargs={
            "n_workers": plan.workers,
            "threads_per_worker": 1,
            "processes": True,
            "host": "127.0.0.1",
            "dashboard_address": None,
        },
    )


@task(cache_policy=NO_CACHE)
def train_on_worker(project_dir: str, name: str, parent_run_id: str | None) -> float:
    """One candidate in a worker process; its seconds of work. The worker's log records of
    the stage go to this task run's log."""
    from tasks.core.logs import configure_logging, forward_to_prefect
    from tasks.stages.transfer import train_candidate

    configure_logging()  # the worker prints tlp's short lines, as the flow's process does
    forward_to_prefect()
    started = time.perf_counter()
    train_candidate(project_dir, name, parent_run_id)
    return time.perf_counter() - started


def train_candidates(ctx: StageContext, names: list[str]) -> dict[str, float]:
    """Train the strategies ``names`` (not stage names); seconds of work each, by name."""
    plan = engine_plan(ctx.params, len(names))
    if plan.runner == "in_process":
        return _in_process(ctx, names)
    return _on_dask(ctx, names, plan)


def _in_process(ctx: StageContext, names: list[str]) -> dict[str, float]:
    from tasks.stages.transfer import run_candidate

    seconds = {}
    for name in names:
        log.info("transfer@%s: started", name)
        started = time.perf_counter()
        try:
            run_candidate(ctx, name)
        except Exception as exc:  # named as a stage failure is (tasks/stages/__init__.py)
            raise CandidateFailed(
                f"stage 'transfer@{name}' failed: {type(exc).__name__}: {exc}"
            ) from exc
        seconds[name] = time.perf_counter() - started
        log.info("transfer@%s: done in %.1f s", name, seconds[name])
    return seconds


def _on_dask(ctx: StageContext, names: list[str], plan: EnginePlan) -> dict[str, float]:
    """Submit every candidate, then wait for all (one failure does not stop the others);
    the MLflow runs that killed attempts left RUNNING are ended; a failure is then one line."""
    import dask

    ensure_distributed_config()
    retries = ctx.params.engine.retries
    where = _where(plan)
    log.info("transfer: %d candidates on %s", len(names), where)
    seconds, failures = {}, {}
    quiet = _SlowExitFilter()
    logging.getLogger("distributed.nanny").addFilter(quiet)
    try:
        with dask.config.set(
            {
                "distributed.scheduler.allowed-failures": retries,
                "distributed.nanny.pre-spawn-environ": _worker_environ(),
            }
        ):
            _submit_and_wait(ctx, names, plan, seconds, failures)
    finally:
        logging.getLogger("distributed.nanny").removeFilter(quiet)
    _end_orphaned_runs(ctx)
    if failures:
        name, cause = next(iter(failures.items()))
        more = f" (and {len(failures) - 1} more: {', '.join(list(failures)[1:])})"
        raise CandidateFailed(
            f"candidate transfer@{name} failed on {where}: {cause}"
            + (more if len(failures) > 1 else "")
        )
    return seconds


def _submit_and_wait(ctx, names, plan, seconds: dict, failures: dict) -> None:
    retries = ctx.params.engine.retries
    with task_runner(plan, retries) as runner:
        allowed = _allowed_failures(runner, plan, retries)
        futures = {
            name: runner.submit(
                train_on_worker.with_options(name=f"transfer@{name}"),
                {
                    "project_dir": str(ctx.project_dir),
                    "name": name,
                    "parent_run_id": ctx.parent_run_id,
                },
            )
            for name in names
        }
        for name, future in futures.items():
            try:
                seconds[name] = future.result()
            except Exception as exc:
                failures[name] = _cause(exc, allowed)
                log.error("transfer@%s: failed: %s", name, failures[name])
            else:
                log.info("transfer@%s: trained in %.1f s of work", name, seconds[name])


# Dask's nannies set MALLOC_TRIM_THRESHOLD_ in each worker's environment (to give memory back
# to the OS sooner); setting it turns off glibc's adaptive mmap threshold, so every tensor
# buffer over 128 KiB is a fresh mmap and munmap, and training in a worker took 1.5-2.5x the
# CPU of the same training in this process (benchmarks/candidates.py). Not for tlp's workers.
MALLOC_TRIM_KEY = "MALLOC_TRIM_THRESHOLD_"


def ensure_distributed_config() -> None:
    """distributed's defaults in dask's config: they are added when distributed is first
    imported, and a process that reset dask's config since (seen in the test suite: every
    ``distributed.*`` key gone, KeyError 'distributed') gets them back."""
    import dask
    from distributed.config import defaults

    if "distributed" not in dask.config.config:
        dask.config.update_defaults(defaults)


def _worker_environ() -> dict:
    """Dask's pre-spawn environment of a local worker, less ``MALLOC_TRIM_THRESHOLD_``."""
    import dask

    ensure_distributed_config()

    environ = dask.config.get("distributed.nanny.pre-spawn-environ", default={}) or {}
    return {k: v for k, v in environ.items() if k != MALLOC_TRIM_KEY}


class _SlowExitFilter(logging.Filter):
    """A worker process that takes over the nanny's 4 s to exit when the pool closes (its
    MLflow and Prefect threads draining) is killed, as intended: not worth a warning line."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "still alive after" not in record.getMessage()


def _where(plan: EnginePlan) -> str:
    if plan.runner == "dask":
        return f"the Dask cluster at {plan.address}"
    return f"a local Dask cluster of {plan.workers} worker processes"


def _allowed_failures(runner, plan: EnginePlan, retries: int) -> int:
    """How often the scheduler reruns a lost worker's task: ours, or the cluster's setting."""
    if plan.runner != "dask":
        return retries
    try:
        return int(
            runner.client.run_on_scheduler(lambda dask_scheduler: dask_scheduler.allowed_failures)
        )
    except Exception:
        return -1


def _cause(exc: BaseException, allowed: int) -> str:
    """Why a candidate failed, in words: a worker that died, or what the stage raised."""
    from distributed import KilledWorker

    if isinstance(exc, KilledWorker):
        tries = f" after {allowed} retr{'y' if allowed == 1 else 'ies'}" if allowed >= 0 else ""
        return f"its worker died (KilledWorker){tries}"
    if isinstance(exc, StageFailed):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"


def _end_orphaned_runs(ctx: StageContext) -> list[str]:
    """Every candidate has finished now: a ``transfer/NAME`` run under this pipeline's parent
    still RUNNING belongs to an attempt whose worker died (on any host), so it is FAILED."""
    if ctx.parent_run_id is None:
        return []
    from mlflow import MlflowClient

    client = MlflowClient()
    query = f"attributes.status = 'RUNNING' and tags.`mlflow.parentRunId` = '{ctx.parent_run_id}'"
    ended = []
    for run in client.search_runs([ctx.experiment_id], filter_string=query, max_results=1000):
        if not (run.info.run_name or "").startswith("transfer/"):
            continue
        client.set_tag(run.info.run_id, ENDED_TAG, "its worker died before the run ended")
        client.set_terminated(run.info.run_id, status="FAILED")
        ended.append(run.info.run_id)
    if ended:
        log.warning("marked %d candidate run(s) of a lost worker FAILED: %s", len(ended), ended)
    return ended
