"""The Optuna search of a candidate (tasks/modeling/search.py) on real prepared data: the
first trial is transfer.* as given, the trial budget holds, each trial is a nested MLflow run
under the candidate's run, the best values train the candidate and are in its report, a rerun
continues the stored study without training again, and the pruner stops a trial mid-fit."""

from __future__ import annotations

import optuna
import pytest
from mlflow import MlflowClient

pytestmark = pytest.mark.integration

TRIALS = 3


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """The smoke data, shrunk: the scratch strategy alone needs no source model."""
    from tasks.core.context import open_context
    from tasks.core.params import resolve_params
    from tests.conftest import ROOT

    project = tmp_path_factory.mktemp("search")
    params = resolve_params(ROOT / "params.yaml", "smoke", _overrides(project))
    from tasks.stages import prepare

    prepare.run(open_context(project, params))
    return project


def _overrides(project) -> list[str]:
    return [
        f"storage.tracking_uri=sqlite:///{project}/m.db",
        "base.threads=1",
        "data.source.limit=300",
        "transfer.strategies=[scratch]",
        "transfer.epochs=2",
        f"search.trials={TRIALS}",
        "search.startup_trials=1",
        "search.pruner=none",
        "search.space.scratch={scratch_lr: {low: 1.0e-3, high: 1.0e-2, log: true}}",
    ]


def _context(project):
    from tasks.core.context import open_context
    from tasks.core.params import resolve_params, write_resolved
    from tests.conftest import ROOT

    params = resolve_params(ROOT / "params.yaml", "smoke", _overrides(project))
    write_resolved(params, project)
    return open_context(project, params)


def test_a_search_tunes_the_candidate_and_a_rerun_continues_its_study(project):
    from tasks.core import tracking
    from tasks.modeling.search import open_study
    from tasks.stages import transfer

    ctx = _context(project)
    with tracking.child_run("pipeline", ctx.experiment_id, None) as parent:
        ctx.parent_run_id = parent
        report = transfer.run_candidate(ctx, "scratch")
    search = report["search"]
    study = open_study(ctx.params, "scratch", project)
    trials = sorted(study.trials, key=lambda t: t.number)
    assert len(trials) == TRIALS == search["complete"] + search["pruned"] + search["failed"]
    assert trials[0].params == {"scratch_lr": ctx.params.transfer.scratch_lr}  # as given
    assert search["default_value"] == trials[0].value
    assert search["best_value"] == max(t.value for t in trials) == study.best_value
    assert search["best_params"] == study.best_params
    assert search["storage"].endswith("optuna.db")  # in the project, by default

    client = MlflowClient()
    runs = client.search_runs([ctx.experiment_id], f"tags.mlflow.parentRunId = '{parent}'")
    (candidate,) = [r for r in runs if r.info.run_name == "transfer/scratch"]
    best = study.best_params["scratch_lr"]
    assert float(candidate.data.params["scratch_lr"]) == pytest.approx(best)  # trained tuned
    assert float(candidate.data.params["search.best.scratch_lr"]) == pytest.approx(best)
    assert candidate.data.metrics["search_trials_complete"] == search["complete"]
    cid = candidate.info.run_id
    children = client.search_runs([ctx.experiment_id], f"tags.mlflow.parentRunId = '{cid}'")
    assert sorted(r.info.run_name for r in children) == [
        f"transfer/scratch/trial-{t.number}" for t in trials
    ]
    for run in children:
        number = int(run.info.run_name.rsplit("-", 1)[1])
        assert float(run.data.params["scratch_lr"]) == pytest.approx(
            trials[number].params["scratch_lr"]
        )
        assert run.data.tags["state"] == "COMPLETE"
        assert run.data.metrics["val_accuracy"] == pytest.approx(trials[number].value)

    from tasks.registry.lineage import format_lineage
    from tasks.registry.publishing import search_tags

    tags = search_tags(ctx, "scratch")  # on the registered version, were scratch registered
    assert tags["search.trials"] == str(TRIALS)
    assert float(tags["search.best.scratch_lr"]) == pytest.approx(best)
    keys = ("model", "version", "git_commit", "git_dirty", "params_hash", "strategy")
    keys += ("test_accuracy", "mlflow_run_id", "mlflow_parent_run_id", "model_source")
    info = dict.fromkeys((*keys, "prefect_flow_run_id", "prefect_flow_run_url"), "")
    info |= {"aliases": [], "dvc": {}, "gate": {}, "params": None, "missing": []}
    info["search"] = {k.removeprefix("search."): v for k, v in tags.items()}
    (line,) = [x for x in format_lineage(info).splitlines() if x.startswith("  search ")]
    assert f"scratch_lr={tags['search.best.scratch_lr']}" in line and f"({TRIALS} trials" in line

    from tasks.modeling.search import tune

    again = tune(transfer.make_job(ctx, "scratch"), transfer.make_job, None)  # the stored study
    assert len(open_study(ctx.params, "scratch", project).trials) == TRIALS  # none rerun
    assert again.best_params == search["best_params"]


def test_the_pruner_stops_a_trial_during_training(project):
    """A pruner that finds every reported val accuracy too low stops the first epoch; the
    trial's run says so."""
    from tasks.core import tracking
    from tasks.modeling.search import objective
    from tasks.stages import transfer

    ctx = _context(project)
    job = transfer.make_job(ctx, "scratch")
    study = optuna.create_study(direction="maximize", pruner=optuna.pruners.ThresholdPruner(2.0))
    with tracking.child_run("transfer/scratch", ctx.experiment_id, None) as run_id:
        study.optimize(objective(job, run_id), n_trials=1)
    (trial,) = study.trials
    assert trial.state == optuna.trial.TrialState.PRUNED
    assert list(trial.intermediate_values) == [0]  # stopped after the first epoch
    client = MlflowClient()
    (run,) = client.search_runs([ctx.experiment_id], f"tags.mlflow.parentRunId = '{run_id}'")
    assert run.data.tags["state"] == "PRUNED"
    # one epoch's val accuracy, and no final value
    assert len(client.get_metric_history(run.info.run_id, "val_accuracy")) == 1
