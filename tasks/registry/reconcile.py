"""Alias moves made around tlp, found and recorded: ``tlp audit`` and the start of each run.

MLflow's UI (the alias editor, "Promote model") and any script with an ``MlflowClient`` can
move ``@champion`` without the gate and without an audit event. MLflow 3 has registry
webhooks, but they need an HTTP receiver that is always up, and the default store (SQLite,
no server) fires none; tlp has no always-on service. So each alias tlp manages is compared
with the last move the audit trail recorded for it (the ``alias_event.*`` tags of the model,
``tasks/registry/audit.py``): where they differ the alias was moved outside tlp, or by a run
killed between the move and its record. Either way the move is recorded now as an
``outside-tlp`` event (flagged, never gated), the version is tagged, and it is reported.

A version cut short during registration (kill -9 before the register stage's last tag,
``tlp.registration=complete``) is tagged ``tlp.registration=incomplete`` here; the gate and
``tlp promote`` never take it (``identity.registration_incomplete``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from tasks.registry import audit, identity

OUTSIDE_ACTION = "outside-tlp"
OUTSIDE_TAG = "tlp.outside_move"


@dataclass(frozen=True)
class Finding:
    """One thing reconciliation found (and recorded)."""

    kind: str  # outside-move | incomplete-registration
    model: str
    alias: str | None
    from_version: str | None
    to_version: str | None
    message: str

    def as_dict(self) -> dict:
        return asdict(self)


def last_recorded(events: list[dict], alias: str) -> tuple[bool, str | None]:
    """(whether any event names ``alias``, the version its last recorded event left it on)."""
    mine = [e for e in events if e.get("alias") == alias]
    if not mine:
        return False, None
    return True, max(mine, key=lambda e: int(e.get("seq") or 0))["to_version"]


def reconcile(project_dir: Path, name: str, aliases: tuple[str, ...]) -> list[Finding]:
    """Compare ``aliases`` of model ``name`` with the audit trail; record and return each
    unrecorded move, and flag incomplete registrations. Nothing found: an empty list."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    from tasks.registry.aliases import alias_lock

    client = MlflowClient()
    try:
        client.get_registered_model(name)
    except MlflowException as exc:
        if getattr(exc, "error_code", "") == "RESOURCE_DOES_NOT_EXIST":
            return []
        raise
    # read and record under the alias lock: a move of another run between its alias change
    # and its event (both under this lock) is never mistaken for an outside move
    with alias_lock(project_dir, name):
        model = client.get_registered_model(name)
        tags = dict(model.tags)
        current = {a: str(v) for a, v in (model.aliases or {}).items()}
        events = audit.registry_events(tags, name)
        found = [
            f for alias in aliases if (f := _check_alias(project_dir, name, alias, current, events))
        ]
    return found + _incomplete(client, name, tags)


def _check_alias(
    project_dir: Path, name: str, alias: str, current: dict, events: list[dict]
) -> Finding | None:
    from mlflow import MlflowClient

    from tasks.registry.aliases import record_event

    _, recorded = last_recorded(events, alias)
    now = current.get(alias)
    if now == recorded:
        return None
    why = (
        "moved outside tlp (the MLflow UI or API), or by a run killed before recording it; "
        "not gated; found by reconciliation"
    )
    event = audit.AliasEvent(name, alias, OUTSIDE_ACTION, recorded, now, why)
    record_event(project_dir, event)  # the caller holds the alias lock
    if now is not None:
        value = f"@{alias} {recorded or 'none'} -> {now} (seq {event.seq}, not gated)"
        MlflowClient().set_model_version_tag(name, now, OUTSIDE_TAG, value)
    message = (
        f"{name}: @{alias} is on version {now or 'none'}, but the audit trail last moved it to "
        f"{recorded or 'none'}: an unrecorded move (recorded now as event {event.seq}, flagged "
        f"{OUTSIDE_ACTION})"
    )
    return Finding("outside-move", name, alias, recorded, now, message)


def _incomplete(client, name: str, model_tags: dict) -> list[Finding]:
    """Versions of a task-bound model without ``tlp.registration``: registration cut short."""
    if identity.TASK_ID not in model_tags:
        return []  # versions registered before completion was recorded: nothing to tell
    found = []
    for mv in client.search_model_versions(f"name='{name}'", max_results=1000):
        if identity.REGISTRATION in mv.tags:
            continue
        client.set_model_version_tag(name, mv.version, identity.REGISTRATION, identity.INCOMPLETE)
        message = (
            f"{name}: version {mv.version} is an incomplete registration (its register stage "
            "did not finish); tagged tlp.registration=incomplete, never gated or promoted"
        )
        found.append(Finding("incomplete-registration", name, None, None, str(mv.version), message))
    return found
