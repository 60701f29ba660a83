"""Stage ``register``: the best candidate as a pyfunc model version, with lineage and aliases."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import mlflow
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from tasks.core.context import StageContext
from tasks.registry import audit
from tasks.registry.serving import CHECKPOINT_ARTIFACT

T = TypeVar("T")


class RegistryUnavailable(RuntimeError):
    """The tracking server did not answer after retries; aliases were left where they were."""


class ChampionMoved(RuntimeError):
    """Compare-and-set failed: someone else moved ``@champion`` since the gate looked at it."""


_TRANSIENT_TEXT = (
    "failed with exception",  # MLflow REST client: connection refused, reset, timed out
    "Max retries exceeded",
    "Connection refused",
    "database is locked",  # SQLite store under concurrent writers
    "TEMPORARILY_UNAVAILABLE",
)


def is_transient(exc: BaseException) -> bool:
    """Errors worth retrying: the store was unreachable or busy, not a wrong request."""
    import requests

    if isinstance(exc, (requests.exceptions.ConnectionError, requests.exceptions.Timeout)):
        return True
    if isinstance(exc, (ConnectionError, TimeoutError)):
        return True
    text = str(exc)
    return isinstance(exc, MlflowException) and any(t in text for t in _TRANSIENT_TEXT)


def with_retries(fn: Callable[[], T], what: str, retries: int = 3, delay: float = 1.0) -> T:
    """Call ``fn``, retrying transient tracking errors with exponential backoff."""
    for attempt in range(retries + 1):
        try:
            return fn()
        except Exception as exc:
            if not is_transient(exc):
                raise
            if attempt == retries:
                first_line = str(exc).splitlines()[0][:300]
                raise RegistryUnavailable(
                    f"{what}: tracking server {mlflow.get_tracking_uri()} unreachable after "
                    f"{retries + 1} attempt(s) ({first_line})"
                ) from exc
            time.sleep(delay * 2**attempt)
    raise AssertionError("unreachable")


def _lock_path(project_dir: Path, name: str) -> Path:
    """Next to a SQLite store (every writer of it shares the lock), else in the project."""
    uri = mlflow.get_registry_uri() or ""
    if uri.startswith("sqlite:///"):
        db = Path(uri[len("sqlite:///") :])
        return db.with_name(f"{db.name}.{name}.alias.lock")
    return project_dir / ".tlp" / f"{name}.alias.lock"


@contextmanager
def alias_lock(project_dir: Path, name: str, timeout: float = 300.0) -> Iterator[Path]:
    """Serialise alias moves of one model: two pipelines never interleave read-check-move."""
    import fcntl

    path = _lock_path(project_dir, name)
    path.parent.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + timeout
    with path.open("a") as fh:
        while True:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise TimeoutError(
                        f"{path}: another alias move held the lock too long"
                    ) from None
                time.sleep(0.1)
        try:
            yield path
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _pip_requirements() -> list[str]:
    from importlib.metadata import version

    packages = [
        "torch",
        "torchvision",
        "timm",
        "safetensors",
        "numpy",
        "pandas",
        "pillow",
        "pydantic",
    ]
    return [f"{name}=={version(name)}" for name in packages] + [f"mlflow=={mlflow.__version__}"]


def input_example(example_image: Path | None, size: int, channels: int) -> list:
    """One raw uint8 image as nested lists (what a REST client sends in ``inputs``)."""
    import numpy as np

    if example_image is not None:
        from tasks.data.preprocessing import read_image

        image = read_image(example_image, channels)
    else:
        shape = (size, size) if channels == 1 else (size, size, channels)
        image = np.zeros(shape, np.uint8)
    return [image.tolist()]


def log_model(ckpt_dir: Path, registered_model_name: str, example_image: Path | None = None):
    """Log the checkpoint as a models-from-code pyfunc (nothing pickled) and register it.

    The signature comes from ``ImageClassifier.predict``'s ``list[Any]`` hint: MLflow records
    it without coercing inputs, so arrays of any image shape and file paths pass through;
    the input example is one real uint8 image; the class names go into the model metadata.
    """
    from tasks.modeling.models import read_card

    card = read_card(ckpt_dir)
    return mlflow.pyfunc.log_model(
        name="model",
        python_model=str(Path(__file__).with_name("_pyfunc_entry.py")),
        artifacts={CHECKPOINT_ARTIFACT: str(ckpt_dir)},
        pip_requirements=_pip_requirements(),  # explicit: inferring them costs a subprocess
        registered_model_name=registered_model_name,
        input_example=input_example(
            example_image, card.preprocess.image_size, card.preprocess.channels
        ),
        metadata={
            "classes": list(card.classes),
            "arch": card.arch,
            "strategy": card.strategy,
            "input": "uint8 images HxW or HxWxC (one or a batch), or image file paths",
            "output": "label, probability, probabilities (in the order of classes)",
        },
    )


def tag_version(name: str, version: str, tags: dict[str, str]) -> None:
    client = MlflowClient()
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, value)


def alias_version(name: str, alias: str) -> str | None:
    """The version an alias points to, or None."""
    try:
        return str(MlflowClient().get_model_version_by_alias(name, alias).version)
    except MlflowException as exc:
        if is_transient(exc):  # unreachable is not "no alias": the caller must not act on it
            raise
        return None


def set_alias(name: str, alias: str, version: str) -> None:
    MlflowClient().set_registered_model_alias(name, alias, version)


def record_event(project_dir: Path, event: audit.AliasEvent) -> audit.AliasEvent:
    """Write an alias move to the registry (model + version tags) and the local event log."""
    client = MlflowClient()
    event.seq = audit.next_seq(client.get_registered_model(event.model).tags)
    key, value = f"{audit.TAG_PREFIX}{event.seq:06d}", event.to_json()
    client.set_registered_model_tag(event.model, key, value)
    for version in {event.from_version, event.to_version} - {None}:
        client.set_model_version_tag(event.model, version, key, value)
    audit.append(project_dir, event)
    return event


def mark_newest(
    project_dir: Path, name: str, alias: str, version: str, retries: int = 3, delay: float = 1.0
) -> audit.AliasEvent | None:
    """Point ``alias`` (``@challenger``) at ``version`` unless a newer version already has it.

    Read and move happen under the alias lock, so concurrent registrations end with the alias
    on the highest version; the move is recorded like every other.
    """
    with alias_lock(project_dir, name):
        current = with_retries(
            lambda: alias_version(name, alias), f"reading @{alias}", retries, delay
        )
        if current is not None and int(current) >= int(version):
            return None
        with_retries(
            lambda: set_alias(name, alias, version), f"moving @{alias} to {version}", retries, delay
        )
        event = audit.AliasEvent(name, alias, alias, current, version, "newest candidate")
        return with_retries(
            lambda: record_event(project_dir, event), f"recording @{alias}", retries, delay
        )


def move_champion(
    project_dir: Path,
    name: str,
    to_version: str,
    expected_from: str | None,
    action: str,
    reason: str,
    gate: dict | None = None,
    champion_alias: str = "champion",
    previous_alias: str = "previous_champion",
    previous_to: str | None | Any = ...,
    retries: int = 3,
    delay: float = 1.0,
) -> audit.AliasEvent:
    """Compare-and-set ``@champion`` from ``expected_from`` to ``to_version``, under the lock.

    The old champion keeps ``@previous_champion`` (or ``previous_to`` for a rollback). If
    ``@champion`` is no longer at ``expected_from`` nothing moves and ``ChampionMoved`` is raised.
    """
    with alias_lock(project_dir, name):
        current = with_retries(
            lambda: alias_version(name, champion_alias),
            f"reading @{champion_alias}",
            retries,
            delay,
        )
        if current != expected_from:
            raise ChampionMoved(
                f"@{champion_alias} of {name} moved to version {current} while version "
                f"{to_version} was compared with version {expected_from}"
            )
        new_previous = current if previous_to is ... else previous_to
        old_previous = with_retries(
            lambda: alias_version(name, previous_alias),
            f"reading @{previous_alias}",
            retries,
            delay,
        )

        def move() -> None:
            client = MlflowClient()
            if new_previous is None:
                if old_previous is not None:
                    client.delete_registered_model_alias(name, previous_alias)
            else:
                set_alias(name, previous_alias, new_previous)
            set_alias(name, champion_alias, to_version)

        with_retries(move, f"moving @{champion_alias} of {name} to {to_version}", retries, delay)
        event = audit.AliasEvent(
            name, champion_alias, action, current, to_version, reason, gate=gate
        )
        record = lambda e: with_retries(  # noqa: E731
            lambda: record_event(project_dir, e), f"recording @{e.alias}", retries, delay
        )
        record(event)
        if new_previous != old_previous:
            record(
                audit.AliasEvent(
                    name, previous_alias, action, old_previous, new_previous, reason, gate=gate
                )
            )
        return event


def version_aliases(name: str, version: str) -> list[str]:
    return list(MlflowClient().get_model_version(name, version).aliases)


def version_exists(name: str, version: str) -> bool:
    try:
        MlflowClient().get_model_version(name, version)
        return True
    except MlflowException as exc:
        if is_transient(exc):
            raise
        return False


def lineage_tags(ctx: StageContext) -> dict[str, str]:
    """Git commit, params hash, DVC hashes of data and checkpoints, Prefect and MLflow runs."""
    from tasks.core import versioning

    commit, dirty = versioning.git_revision(ctx.project_dir)
    tags = {
        "git_commit": commit,
        "git_dirty": str(dirty).lower(),
        "params_hash": ctx.params.digest(),
        "prefect_flow_run_id": ctx.flow_run.get("id", "none"),
        "prefect_flow_run_url": ctx.flow_run.get("url", "none"),
        "mlflow_parent_run_id": ctx.parent_run_id or "none",
    }
    for path, digest in versioning.output_hashes(ctx.project_dir).items():
        if path.startswith(("data/", "models/")):
            tags[f"dvc.{path}"] = digest
    return tags


def first_test_image(layout) -> Path | None:
    from tasks.data.datasets import read_manifest

    manifest = read_manifest(layout.target_data)
    test = manifest[manifest["split"] == "test"]
    return layout.target_data / test["path"].iloc[0] if len(test) else None


LINEAGE_FILES = ("params.resolved.yaml", "dvc.lock", "reports/metrics.json")


def lineage_files(project_dir: Path) -> list[Path]:
    return [project_dir / f for f in LINEAGE_FILES if (project_dir / f).is_file()]


def champion_before(name: str, version: str, champion_alias: str = "champion") -> str | None:
    """Who held ``@champion`` just before ``version`` last took it, from the recorded events."""
    events = audit.registry_events(MlflowClient().get_registered_model(name).tags)
    for event in reversed(events):
        promoted = event["alias"] == champion_alias and event["action"] != "rollback"
        if promoted and event["to_version"] == version:
            return event["from_version"]
    return None


def rollback_champion(
    project_dir: Path,
    name: str,
    reason: str,
    champion_alias: str = "champion",
    previous_alias: str = "previous_champion",
    retries: int = 3,
    delay: float = 1.0,
) -> audit.AliasEvent:
    """``@champion`` back to ``@previous_champion``, whose own predecessor becomes previous."""

    def read() -> tuple[str | None, str | None]:
        return alias_version(name, champion_alias), alias_version(name, previous_alias)

    current, previous = with_retries(read, "reading the aliases", retries, delay)
    if previous is None:
        raise ValueError(f"{name} has no @{previous_alias}: nothing to roll back to")
    before = with_retries(
        lambda: champion_before(name, previous, champion_alias), "reading events", retries, delay
    )
    return move_champion(
        project_dir,
        name,
        previous,
        expected_from=current,
        action="rollback",
        reason=reason,
        champion_alias=champion_alias,
        previous_alias=previous_alias,
        previous_to=before if before != previous else None,
        retries=retries,
        delay=delay,
    )
