"""MLflow tracking: the project's store, the pipeline's parent run, per-stage child runs."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import mlflow
from mlflow import MlflowClient


def resolve_tracking_uri(uri: str, project_dir: Path) -> str:
    """Relative sqlite paths live in the project; every other URI is used as given."""
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri.startswith(prefix + "/"):
        return prefix + str((project_dir / uri[len(prefix) :]).resolve())
    return uri


def configure(uri: str, project_dir: Path, experiment: str) -> str:
    """Point MLflow at the project's store and experiment; returns the experiment id."""
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    tracking_uri = resolve_tracking_uri(uri, project_dir)
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)
    client = MlflowClient()
    found = client.get_experiment_by_name(experiment)
    if found is not None:
        return found.experiment_id
    artifacts = None  # a server decides where artifacts go; a local store keeps them in the project
    if tracking_uri.startswith("sqlite:"):
        artifacts = (project_dir / "mlartifacts").resolve().as_uri()
    return client.create_experiment(experiment, artifact_location=artifacts)


def start_parent_run(experiment_id: str, run_name: str, tags: dict[str, str]) -> str:
    return MlflowClient().create_run(experiment_id, run_name=run_name, tags=tags).info.run_id


def end_run(run_id: str, failed: bool = False) -> None:
    MlflowClient().set_terminated(run_id, status="FAILED" if failed else "FINISHED")


@contextmanager
def child_run(name: str, experiment_id: str, parent_run_id: str | None) -> Iterator[str]:
    """A run for one stage or strategy, nested under the pipeline's parent run when there is one."""
    with mlflow.start_run(
        run_name=name,
        experiment_id=experiment_id,
        parent_run_id=parent_run_id,
        nested=parent_run_id is not None,
    ) as run:
        yield run.info.run_id


def log_epoch(metrics: dict[str, float], step: int) -> None:
    mlflow.log_metrics(metrics, step=step)


def log_params(params: dict) -> None:
    mlflow.log_params({k: str(v)[:500] for k, v in params.items()})


def log_metrics(metrics: dict[str, float], step: int | None = None) -> None:
    mlflow.log_metrics({k: float(v) for k, v in metrics.items()}, step=step)


def log_figure(figure, artifact_file: str) -> None:
    """A matplotlib figure as a PNG artifact of the active run, then closed to free memory."""
    import matplotlib.pyplot as plt

    mlflow.log_figure(figure, artifact_file)
    plt.close(figure)


def set_tags(tags: dict[str, str], run_id: str | None = None) -> None:
    if run_id is None:
        mlflow.set_tags(tags)
    else:
        client = MlflowClient()
        for key, value in tags.items():
            client.set_tag(run_id, key, value)


def log_run_artifact(run_id: str, path: Path) -> None:
    MlflowClient().log_artifact(run_id, str(path))


def finish_parent_run(run_id: str, summary: dict) -> None:
    """Record the pipeline's outcome on its parent run in one batch, then close it."""
    from mlflow.entities import Metric, RunTag

    now = int(time.time() * 1000)
    metrics = [
        Metric(f"{name}_test_accuracy", m["accuracy"], now, 0)
        for name, m in summary["candidates"].items()
    ] + [Metric(f"seconds_{stage}", s, now, 0) for stage, s in summary["stage_seconds"].items()]
    tags = [
        RunTag("registered_model", summary["model_name"]),
        RunTag("registered_version", summary["version"]),
        RunTag("skipped_stages", ",".join(summary["skipped_stages"]) or "none"),
    ]
    client = MlflowClient()
    client.log_batch(run_id, metrics=metrics, tags=tags)
    client.log_dict(run_id, summary, "summary.json")
    client.set_terminated(run_id, status="FINISHED")
