"""Optuna search of one candidate's ``transfer.*`` knobs on validation accuracy (``search.*``).

A study per candidate and per params: its name carries a hash of everything the candidate
depends on, so a changed param starts a fresh study while a killed search continues where it
stopped (the study lives in the RDB storage ``storage.search_uri``, SQLite in the project by
default, Postgres for a team). The first trial is ``transfer.*`` as given, so the search can
never choose something that did worse on val than the defaults. TPE samples the space of
``search.space[<strategy>]``; the median pruner stops a trial whose val accuracy at an epoch
is below the median of earlier trials at that epoch (a linear probe has no epochs: never
pruned). Budgets: ``search.trials`` trials (complete, pruned or failed, so a space where
every trial diverges still ends) and ``search.time_limit`` seconds.

Each trial is a nested MLflow run ``transfer/<name>/trial-<n>`` under the candidate's run,
with the trial's values as params, its per-epoch metrics, ``val_accuracy`` and a ``state``
tag. With ``search.parallel`` > 1 that many processes optimise the same study through the
storage (Optuna's own pattern): local processes, or tasks on the Dask cluster of
``engine.address``; each opens the project from params.resolved.yaml.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import optuna

from tasks.core import tracking
from tasks.core.context import StageContext
from tasks.core.params.scaling import SearchRange, candidate_params
from tasks.core.params.storage import resolve_tracking_uri
from tasks.core.params.training import TransferParams
from tasks.modeling.strategies import STRATEGIES, Job

log = logging.getLogger(__name__)

# a job for strategy ``name`` in a context: module-level, so it can travel to a worker process
MakeJob = Callable[[StageContext, str], Job]
# the trial states the budget counts: a failed (diverged) trial spends budget too
COUNTED = (
    optuna.trial.TrialState.COMPLETE,
    optuna.trial.TrialState.PRUNED,
    optuna.trial.TrialState.FAIL,
)
SQLITE_BUSY_SECONDS = 60  # parallel trials write to one SQLite file: wait, do not fail


@dataclass
class SearchOutcome:
    """What a candidate's search found: the report's and the candidate run's ``search``."""

    study: str
    storage: str  # the storage URL without credentials
    best_params: dict[str, float]
    best_value: float
    default_value: float  # trial 0: transfer.* as given
    complete: int
    pruned: int
    failed: int
    seconds: float

    def as_report(self) -> dict:
        return dataclasses.asdict(self)

    def metrics(self) -> dict[str, float]:
        return {
            "search_best_val_accuracy": self.best_value,
            "search_default_val_accuracy": self.default_value,
            "search_trials_complete": self.complete,
            "search_trials_pruned": self.pruned,
            "search_trials_failed": self.failed,
            "search_seconds": self.seconds,
        }


def study_name(params, name: str) -> str:
    """``<experiment>/<strategy>/<key>``: the key hashes the candidate's params and the whole
    params hash, so any change starts a fresh study and an unchanged rerun continues one."""
    blob = json.dumps(candidate_params(params, name), sort_keys=True) + params.digest()
    key = hashlib.sha256(blob.encode()).hexdigest()[:12]
    return f"{params.base.experiment}/{name}/{key}"


def open_storage(params, project_dir: Path) -> optuna.storages.RDBStorage:
    """``storage.search_uri`` as Optuna RDB storage; relative SQLite paths are in the project."""
    url = resolve_tracking_uri(params.storage.search_uri, project_dir)
    kwargs = {"connect_args": {"timeout": SQLITE_BUSY_SECONDS}} if url.startswith("sqlite") else {}
    return optuna.storages.RDBStorage(url, engine_kwargs=kwargs)


def shown_url(url: str) -> str:
    """The storage URL with its password hidden, for reports and logs."""
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


def open_study(params, name: str, project_dir: Path, worker: int = 0) -> optuna.Study:
    """The candidate's study, created or loaded. Each parallel worker seeds its sampler
    differently, or their random startup trials would all be the same."""
    s = params.search
    pruner = (
        optuna.pruners.MedianPruner(n_startup_trials=s.startup_trials)
        if s.pruner == "median"
        else optuna.pruners.NopPruner()
    )
    return optuna.create_study(
        storage=open_storage(params, project_dir),
        study_name=study_name(params, name),
        direction="maximize",
        load_if_exists=True,
        sampler=optuna.samplers.TPESampler(
            seed=params.base.seed + worker, n_startup_trials=s.startup_trials
        ),
        pruner=pruner,
    )


def with_transfer(params, values: dict):
    """``params`` with ``transfer`` updated by ``values``, validated again."""
    from tasks.core.params.loading import validate

    tree = params.model_dump(mode="json")
    tree["transfer"].update(values)
    return validate(tree, "search: ")


def _sample(trial: optuna.Trial, space: dict[str, SearchRange]) -> dict[str, float]:
    values = {}
    for key, r in space.items():
        integer = "int" in str(TransferParams.model_fields[key].annotation)
        if r.choices is not None:
            values[key] = trial.suggest_categorical(key, list(r.choices))
        elif integer:
            values[key] = trial.suggest_int(key, int(r.low), int(r.high), log=r.log)
        else:
            values[key] = trial.suggest_float(key, r.low, r.high, log=r.log)
    return values


def _pruning_hook(trial: optuna.Trial) -> Callable[[int, dict[str, float]], None]:
    def report(epoch: int, metrics: dict[str, float]) -> None:
        val = metrics.get("val_accuracy")
        if val is None or math.isnan(val):
            return
        trial.report(val, epoch)
        if trial.should_prune():
            raise optuna.TrialPruned(f"epoch {epoch + 1}: val accuracy {val:.4f}")

    return report


def objective(job: Job, candidate_run_id: str | None) -> Callable[[optuna.Trial], float]:
    """One trial: the strategy trained with the trial's values, in a nested MLflow run; its
    value is the trained model's val accuracy (the best epoch's under early stopping)."""
    from tasks.modeling.batches import accuracy

    ctx, name = job.ctx, job.name
    space = ctx.params.search.space[name]

    def run(trial: optuna.Trial) -> float:
        values = _sample(trial, space)
        # resume off: a trial is short-lived, and stopped by the pruner on purpose
        params = with_transfer(ctx.params, {**values, "resume": False})
        trial_job = job.with_params(params, on_epoch=_pruning_hook(trial))
        run_name = f"transfer/{name}/trial-{trial.number}"
        pruned = None
        with tracking.child_run(run_name, ctx.experiment_id, candidate_run_id):
            tracking.log_params(values)
            try:
                model, _ = STRATEGIES[name](trial_job)
            except optuna.TrialPruned as stop:
                pruned = stop
                tracking.set_tags({"state": "PRUNED"})
            else:
                value = accuracy(model.to("cpu"), *job.val)
                tracking.log_metrics({"val_accuracy": value})
                tracking.set_tags({"state": "COMPLETE"})
        if pruned is not None:
            raise pruned
        return value

    return run


def optimize(
    job: Job,
    candidate_run_id: str | None,
    n_trials: int,
    worker: int = 0,
    time_limit: float | None = None,
) -> None:
    """``n_trials`` trials of the job's study, or fewer when ``time_limit`` runs out or the
    study reaches its budget (another process searching it too, e.g. a teammate's)."""
    from tasks.modeling.training import TrainingDiverged

    p = job.params
    study = open_study(p, job.name, job.ctx.project_dir, worker)
    study.optimize(
        objective(job, candidate_run_id),
        n_trials=n_trials,
        timeout=time_limit,
        catch=(TrainingDiverged,),  # a diverged trial fails; the search goes on
        callbacks=[optuna.study.MaxTrialsCallback(p.search.trials, states=COUNTED)],
        gc_after_trial=True,
    )


def optimize_in_worker(
    project_dir: str,
    name: str,
    study: str,
    make_job: MakeJob,
    candidate_run_id: str | None,
    n_trials: int,
    worker: int,
    time_limit: float | None,
) -> None:
    """``optimize`` in a fresh process (local or a Dask worker): the project's
    params.resolved.yaml, torch threads and the MLflow store are set up here."""
    from tasks.core.context import open_context
    from tasks.core.params import load_resolved

    project = Path(project_dir)
    ctx = open_context(project, load_resolved(project))
    if study_name(ctx.params, name) != study:
        raise RuntimeError(
            f"search of {study}: {project}/params.resolved.yaml holds other params than the "
            "search's (written by tlp run / tlp params); the worker would search another study"
        )
    optimize(make_job(ctx, name), candidate_run_id, n_trials, worker, time_limit)


def tune(job: Job, make_job: MakeJob, candidate_run_id: str | None) -> SearchOutcome:
    """Search the job's strategy (``search.*``): the outcome, with the best values found.
    A study that has spent its budget already (an unchanged rerun) trains nothing."""
    ctx, p, name = job.ctx, job.params, job.name
    started = time.perf_counter()
    study = open_study(p, name, ctx.project_dir)
    defaults = {k: getattr(p.transfer, k) for k in p.search.space[name]}
    study.enqueue_trial(defaults, skip_if_exists=True)  # trial 0: the params as given
    remaining = p.search.trials - len(study.get_trials(deepcopy=False, states=COUNTED))
    # the budget split exactly between the processes: none starts a trial past it
    shares = [n for n in _split(remaining, p.search.parallel) if n > 0]
    if len(shares) == 1:
        optimize(job, candidate_run_id, shares[0], time_limit=p.search.time_limit)
    elif shares:
        _optimize_in_parallel(ctx, name, make_job, candidate_run_id, shares)
    return _outcome(open_study(p, name, ctx.project_dir), p, ctx.project_dir, started)


def _split(total: int, parts: int) -> list[int]:
    return [total // parts + (i < total % parts) for i in range(parts)]


def _optimize_in_parallel(
    ctx: StageContext, name: str, make_job: MakeJob, run_id, shares: list[int]
) -> None:
    """One process per share of the trials, on one study: local (spawned: torch and MLflow
    state are not forked) or on the Dask cluster of ``engine.address``."""
    p = ctx.params
    study = study_name(p, name)
    calls = [
        (str(ctx.project_dir), name, study, make_job, run_id, n, worker, p.search.time_limit)
        for worker, n in enumerate(shares)
    ]
    if p.engine.runner == "dask":
        _on_dask(p.engine.address, calls)
        return
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    spawn = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(len(calls), mp_context=spawn) as pool:
        for done in [pool.submit(optimize_in_worker, *call) for call in calls]:
            done.result()


def _on_dask(address: str, calls: list[tuple]) -> None:
    """The calls as tasks of the Dask cluster; from inside a Dask task (a candidate running
    on the cluster) through ``worker_client``, which frees this task's slot meanwhile."""
    import distributed

    try:
        distributed.get_worker()
    except ValueError:  # not on a worker: a client of the cluster at the address
        with distributed.Client(address) as client:
            client.gather([client.submit(optimize_in_worker, *c, pure=False) for c in calls])
        return
    with distributed.worker_client() as client:
        client.gather([client.submit(optimize_in_worker, *c, pure=False) for c in calls])


def _outcome(study: optuna.Study, p, project_dir: Path, started: float) -> SearchOutcome:
    trials = study.get_trials(deepcopy=False)
    states = [t.state for t in trials]
    done = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    if not done:
        raise RuntimeError(
            f"search of {study.study_name}: no trial completed ({len(trials)} tried); raise "
            "search.trials or search.time_limit, or narrow search.space"
        )
    first = min(trials, key=lambda t: t.number)
    url = resolve_tracking_uri(p.storage.search_uri, project_dir)
    return SearchOutcome(
        study=study.study_name,
        storage=shown_url(url),
        best_params=dict(study.best_trial.params),
        best_value=float(study.best_value),
        default_value=float(first.value) if first.value is not None else math.nan,
        complete=len(done),
        pruned=states.count(optuna.trial.TrialState.PRUNED),
        failed=states.count(optuna.trial.TrialState.FAIL),
        seconds=time.perf_counter() - started,
    )
