"""MLflow tracking: the project's store, the pipeline's parent run, per-stage child runs."""

from __future__ import annotations

import logging
import os
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import mlflow
from mlflow import MlflowClient

# MLflow 3's UI opens an experiment by this tag: without it, an experiment with no runs yet
# (and sometimes one with runs) opens in the GenAI view (Traces, Judges, Prompts)
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
MODEL_TRAINING = "custom_model_development"


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
        if EXPERIMENT_KIND_TAG not in found.tags:  # made before the tag; a set kind is kept
            client.set_experiment_tag(found.experiment_id, EXPERIMENT_KIND_TAG, MODEL_TRAINING)
        return found.experiment_id
    artifacts = None  # a server decides where artifacts go; a local store keeps them in the project
    if tracking_uri.startswith("sqlite:"):
        artifacts = (project_dir / "mlartifacts").resolve().as_uri()
    return client.create_experiment(
        experiment, artifact_location=artifacts, tags={EXPERIMENT_KIND_TAG: MODEL_TRAINING}
    )


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


class _LogStream:
    """A text stream whose lines become INFO records of ``logger``."""

    def __init__(self, logger: logging.Logger) -> None:
        self.logger = logger

    def write(self, text: str) -> int:
        for line in text.splitlines():
            if line.strip():
                self.logger.info(line)
        return len(text)

    def flush(self) -> None:
        pass


# what MLflow warns about ImageClassifier.predict's list[Any] hint, deliberate: arrays of any
# image shape and file paths must pass uncoerced (tasks/registry/serving.py)
_HINT_WARNINGS = ("Any type hint is inferred as AnyType", "Decorate your function with")


@contextmanager
def quiet_model_logging() -> Iterator[None]:
    """Around logging and registering the pyfunc: what MLflow prints to the console there
    ("Successfully registered model", "Created version") becomes INFO records of MLflow's
    logger, shown at ``MLFLOW_LOGGING_LEVEL=INFO``, and the two warnings about the type hint
    are dropped. Not by a warnings filter: ``log_model`` sets its own ("once" for every
    UserWarning) in front of any filter of its caller, so the display is what is narrowed."""
    from mlflow.utils import logging_utils

    printed_to = logging_utils.MLFLOW_LOGGING_STREAM  # eprint reads this global at each call
    logging_utils.MLFLOW_LOGGING_STREAM = _LogStream(logging.getLogger("mlflow.tracking"))
    show = warnings.showwarning

    def show_others(message, category, filename, lineno, file=None, line=None):
        if not any(known in str(message) for known in _HINT_WARNINGS):
            show(message, category, filename, lineno, file, line)

    try:
        with warnings.catch_warnings():  # restores showwarning on the way out
            warnings.showwarning = show_others
            yield
    finally:
        logging_utils.MLFLOW_LOGGING_STREAM = printed_to
