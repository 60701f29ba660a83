"""Moving a registered model's aliases: ``@challenger`` to the newest candidate, ``@champion``
by compare-and-set, rollback to ``@previous_champion``; every move recorded (``audit``).

Moves of one model are serialised by a file lock next to the store, so two pipelines never
interleave read, check and move; each registry call is retried on transient errors. After each
move, the history of every version it involved is rewritten as ``alias_history.md`` on that
version's run (``publish_history``).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import mlflow
from filelock import FileLock, Timeout
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from tasks.registry import audit
from tasks.registry.retries import is_transient, with_retries

log = logging.getLogger(__name__)
HISTORY_ARTIFACT = "alias_history.md"


class ChampionMoved(RuntimeError):
    """Compare-and-set failed: someone else moved ``@champion`` since the gate looked at it."""


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
    path = _lock_path(project_dir, name)
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(path, poll_interval=0.1)
    try:
        lock.acquire(timeout=timeout)
    except Timeout:
        raise TimeoutError(f"{path}: another alias move held the lock too long") from None
    try:
        yield path
    finally:
        lock.release()


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
    """Write an alias move to the registry (model + version tags, one readable line each) and
    the local event log (the whole event, as JSON)."""
    client = MlflowClient()
    event.seq = audit.next_seq(client.get_registered_model(event.model).tags)
    key, value = f"{audit.TAG_PREFIX}{event.seq:06d}", event.to_line()
    client.set_registered_model_tag(event.model, key, value)
    for version in {event.from_version, event.to_version} - {None}:
        client.set_model_version_tag(event.model, version, key, value)
    audit.append(project_dir, event)
    return event


def publish_history(name: str, versions: set[str | None]) -> None:
    """``alias_history.md`` (the moves to or from the version, oldest first) rewritten on the
    run that logged each version in ``versions``. A view of the tags: when it cannot be
    written, the move still stands and the next move rewrites it, so it is only logged."""
    client = MlflowClient()
    try:
        events = audit.registry_events(client.get_registered_model(name).tags, name)
        for version in sorted(versions - {None}):
            run_id = client.get_model_version(name, version).run_id
            if run_id:
                text = audit.history_markdown(name, events, version)
                client.log_text(run_id, text, HISTORY_ARTIFACT)
    except (MlflowException, OSError) as exc:
        log.warning("alias history of %s not rewritten: %s", name, exc)


def mark_newest(
    project_dir: Path, name: str, alias: str, version: str, retries: int = 3, delay: float = 1.0
) -> audit.AliasEvent | None:
    """Point ``alias`` (``@challenger``) at ``version`` unless a newer version already has it.

    Read and move happen under the alias lock, so concurrent registrations end with the alias
    on the highest version; the move is recorded like every other.
    """
    retry = functools.partial(with_retries, retries=retries, delay=delay)
    with alias_lock(project_dir, name):
        current = retry(lambda: alias_version(name, alias), f"reading @{alias}")
        if current is not None and int(current) >= int(version):
            return None
        retry(lambda: set_alias(name, alias, version), f"moving @{alias} to {version}")
        event = audit.AliasEvent(name, alias, alias, current, version, "newest candidate")
        recorded = retry(lambda: record_event(project_dir, event), f"recording @{alias}")
    publish_history(name, {current, version})
    return recorded


def _move_pair(
    name: str, champion: tuple[str, str], previous: tuple[str, str | None], old_previous: str | None
) -> None:
    """Set ``(alias, version)`` of the champion and of the previous champion (None: remove)."""
    (previous_alias, new_previous), client = previous, MlflowClient()
    if new_previous is None:
        if old_previous is not None:
            client.delete_registered_model_alias(name, previous_alias)
    else:
        set_alias(name, previous_alias, new_previous)
    set_alias(name, *champion)


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
    retry = functools.partial(with_retries, retries=retries, delay=delay)
    with alias_lock(project_dir, name):
        current = retry(lambda: alias_version(name, champion_alias), f"reading @{champion_alias}")
        if current != expected_from:
            raise ChampionMoved(
                f"@{champion_alias} of {name} moved to version {current} while version "
                f"{to_version} was compared with version {expected_from}"
            )
        new_previous = current if previous_to is ... else previous_to
        old_previous = retry(
            lambda: alias_version(name, previous_alias), f"reading @{previous_alias}"
        )
        retry(
            lambda: _move_pair(
                name, (champion_alias, to_version), (previous_alias, new_previous), old_previous
            ),
            f"moving @{champion_alias} of {name} to {to_version}",
        )
        moves = [(champion_alias, current, to_version)]
        if new_previous != old_previous:
            moves.append((previous_alias, old_previous, new_previous))
        events = [audit.AliasEvent(name, a, action, f, t, reason, gate=gate) for a, f, t in moves]
        for event in events:
            retry(lambda e=event: record_event(project_dir, e), f"recording @{event.alias}")
    publish_history(name, {v for e in events for v in (e.from_version, e.to_version)})
    return events[0]


def champion_before(name: str, version: str, champion_alias: str = "champion") -> str | None:
    """Who held ``@champion`` just before ``version`` last took it, from the recorded events."""
    events = audit.registry_events(MlflowClient().get_registered_model(name).tags, name)
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
    retry = functools.partial(with_retries, retries=retries, delay=delay)

    def read() -> tuple[str | None, str | None]:
        return alias_version(name, champion_alias), alias_version(name, previous_alias)

    current, previous = retry(read, "reading the aliases")
    if previous is None:
        raise ValueError(f"{name} has no @{previous_alias}: nothing to roll back to")
    before = retry(lambda: champion_before(name, previous, champion_alias), "reading events")
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
