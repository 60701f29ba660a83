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

from tasks.core.params.storage import resolve_tracking_uri

# MLflow 3's UI opens an experiment by this tag: without it, an experiment with no runs yet
# (and sometimes one with runs) opens in the GenAI view (Traces, Judges, Prompts)
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
MODEL_TRAINING = "custom_model_development"


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
    """A run for one stage or strategy, nested under the pipeline's parent run when there is one.

    It names the process that opened it (tasks/core/stale.py ends it if that process dies)."""
    from tasks.core.stale import process_tags

    with mlflow.start_run(
        run_name=name,
        experiment_id=experiment_id,
        parent_run_id=parent_run_id,
        nested=parent_run_id is not None,
        tags=process_tags(),
    ) as run:
        yield run.info.run_id


def log_child_run(
    name: str,
    experiment_id: str,
    parent_run_id: str,
    metrics: dict[str, float],
    params: dict[str, str],
) -> str:
    """A finished run under ``parent_run_id`` holding a few numbers, written in one batch
    without becoming the active run (so it can sit inside a stage's run); its params are
    also its tags, so the runs table can show and group by them. Returns its id."""
    from mlflow.entities import Metric, Param

    client, now = MlflowClient(), int(time.time() * 1000)
    tags = {"mlflow.parentRunId": parent_run_id, **params}
    run_id = client.create_run(experiment_id, run_name=name, tags=tags).info.run_id
    client.log_batch(
        run_id,
        metrics=[Metric(k, float(v), now, 0) for k, v in metrics.items()],
        params=[Param(k, str(v)[:500]) for k, v in params.items()],
    )
    client.set_terminated(run_id)
    return run_id


def log_table(columns: dict[str, list], artifact_file: str) -> None:
    """A table (column name -> values) on the active run, shown as one in MLflow's UI."""
    mlflow.log_table(data=columns, artifact_file=artifact_file)


def log_epoch(metrics: dict[str, float], step: int) -> None:
    mlflow.log_metrics(metrics, step=step)


def log_params(params: dict) -> None:
    mlflow.log_params({k: str(v)[:500] for k, v in params.items()})


def flat_params(tree: dict, prefix: str = "") -> dict[str, str]:
    """Nested params as ``section.key`` -> value text (lists and null as JSON), each cut to
    500 characters: the longest value every MLflow store accepts."""
    import json

    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(flat_params(value, f"{prefix}{key}."))
        else:
            text = value if isinstance(value, str) else json.dumps(value)
            out[f"{prefix}{key}"] = text[:500]
    return out


def log_run_params(run_id: str, params: dict[str, str]) -> None:
    """Params on a run that is not the active one, in batches of MLflow's 100."""
    from mlflow.entities import Param

    items = [Param(k, v) for k, v in params.items()]
    client = MlflowClient()
    for start in range(0, len(items), 100):
        client.log_batch(run_id, params=items[start : start + 100])


def log_metrics(metrics: dict[str, float], step: int | None = None) -> None:
    mlflow.log_metrics({k: float(v) for k, v in metrics.items()}, step=step)


def log_dict(data: dict, artifact_file: str) -> None:
    """A JSON-able dict as a JSON (or YAML, by the file's suffix) artifact of the active run."""
    mlflow.log_dict(data, artifact_file)


def log_figure(figure, artifact_file: str) -> None:
    """A matplotlib figure as a PNG artifact of the active run, then closed to free memory."""
    import matplotlib.pyplot as plt

    mlflow.log_figure(figure, artifact_file)
    plt.close(figure)


def log_run_figure(run_id: str, figure, artifact_file: str) -> None:
    """``log_figure`` for a run that is not the active one (e.g. a finished stage run)."""
    import matplotlib.pyplot as plt

    MlflowClient().log_figure(run_id, figure, artifact_file)
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


def run_description(summary: dict, prefect_url: str | None = None) -> str:
    """The pipeline run's description on its MLflow page (markdown): what was registered and
    how well it tests, what the promotion gate decided, negative transfer, the Prefect run."""
    strategy = summary["registered_strategy"]
    m = summary["candidates"][strategy]
    ci = m.get("accuracy_ci")
    interval = f" (95% CI {ci[0]:.3f}-{ci[1]:.3f})" if ci else ""
    val = m.get("val_accuracy")
    lines = [
        f"Registered **{summary['model_name']} version {summary['version']}** "
        f"(`{strategy}`, chosen on {summary.get('selected_on') or 'accuracy'}): test accuracy "
        f"{m['accuracy']:.4f}{interval} on {m.get('n')} test images"
        + (f", validation accuracy {val:.4f} on {m.get('val_n')}" if val is not None else "")
        + "."
    ]
    promotion, champion = summary.get("promotion"), summary.get("champion_alias", "champion")
    if promotion:
        if promotion.get("promoted"):
            forced = " (FORCED)" if promotion.get("forced") else ""
            said = f"promoted to @{champion}{forced}"
        elif promotion.get("gate") is None:
            said = "nothing to decide"
        elif promotion.get("champion_before"):
            said = f"kept out; @{champion} stays version {promotion['champion_before']}"
        else:
            said = f"kept out; there is still no @{champion}"
        lines.append(f"Promotion gate: {said}: {promotion.get('reason')}.")
    negative = [n for n, f in (summary.get("negative_transfer") or {}).items() if f["negative"]]
    lines.append(
        "Negative transfer: "
        + (
            ", ".join(negative) + " fell below scratch by more than the margin."
            if negative
            else "none flagged."
        )
    )
    shown = ", ".join(f"{n} {c['accuracy']:.4f}" for n, c in summary["candidates"].items())
    lines.append(f"Test accuracy of every candidate: {shown} (runs `evaluate/<strategy>`).")
    if prefect_url and prefect_url != "none":
        lines.append(f"Prefect flow run: [{summary.get('prefect_flow_run_name')}]({prefect_url}).")
    return "\n\n".join(lines)


def finish_parent_run(run_id: str, summary: dict, prefect_url: str | None = None) -> None:
    """Record the pipeline's outcome on its parent run in one batch, then close it: the
    registered candidate's numbers under the names each ``evaluate/<strategy>`` run uses
    (so one chart compares pipeline runs), the seconds per stage, the description."""
    from mlflow.entities import Metric, RunTag

    now = int(time.time() * 1000)
    m = summary["candidates"][summary["registered_strategy"]]
    numbers = {"test_accuracy": m["accuracy"], "test_n": m.get("n"), "ece": m.get("ece")}
    numbers.update(val_accuracy=m.get("val_accuracy"), macro_f1=m.get("macro_f1"))
    metrics = [Metric(k, float(v), now, 0) for k, v in numbers.items() if v is not None]
    metrics += [
        # transfer@full as seconds_transfer/full: MLflow refuses "@" in a metric name
        Metric(f"seconds_{stage.replace('@', '/')}", s, now, 0)
        for stage, s in summary["stage_seconds"].items()
    ]
    tags = [
        RunTag("registered_model", summary["model_name"]),
        RunTag("registered_version", summary["version"]),
        RunTag("registered_strategy", summary["registered_strategy"]),
        RunTag("skipped_stages", ",".join(summary["skipped_stages"]) or "none"),
        RunTag("mlflow.note.content", run_description(summary, prefect_url)),
    ]
    if prefect_url and prefect_url != "none":
        tags.append(RunTag("prefect_flow_run_url", prefect_url))
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
