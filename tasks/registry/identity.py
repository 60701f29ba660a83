"""Which task a registered model belongs to: its label space and its target data.

A model name in the registry holds versions of one task. Comparing versions of different
tasks (digits vs. photos, or the same classes on another target) is meaningless: the gate
would score the old champion on data it never saw, and ``@champion`` would move from one
task to another. So the task is recorded when a model is created (registered-model tags) and
on each version (the same tags, next to ``dvc.data/target``, the hash of the exact data), and
a run, ``tlp promote`` and ``tlp rollback`` refuse, before any work, a model of another task.

The identity is the ordered class names of the target (the model's output order) and the
target itself: ``builtin:<name>`` or ``folder:<folder name>``; ``tlp.task.id`` is a short
hash of both. A folder is identified by its name, not its location: the same dataset at
another path (a teammate's checkout against a shared tracking server, a moved project) is
the same task; which data each version saw exactly is its ``dvc.data/target`` hash.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

TASK_ID = "tlp.task.id"
TASK_TARGET = "tlp.task.target"
TASK_CLASSES = "tlp.task.classes"
# the register stage sets this last: a version without it was cut short (kill -9)
REGISTRATION = "tlp.registration"
COMPLETE = "complete"
INCOMPLETE = "incomplete"
OUTSIDE_FLOW = "tlp.registered_outside_flow"
SHOWN = 4  # class names shown in a message


class TaskConflict(ValueError):
    """The named model holds versions of another task; the message says both and the fix."""


@dataclass(frozen=True)
class Task:
    """One task: the target's ordered class names and where the target comes from."""

    classes: tuple[str, ...]
    target: str  # builtin:NAME | folder:NAME

    @property
    def id(self) -> str:
        blob = json.dumps({"classes": list(self.classes), "target": self.target})
        return hashlib.sha256(blob.encode()).hexdigest()[:12]

    def tags(self) -> dict[str, str]:
        return {
            TASK_ID: self.id,
            TASK_TARGET: self.target,
            TASK_CLASSES: json.dumps(list(self.classes)),
        }

    def describe(self) -> str:
        """``10 classes ('0', '1', ... ) of builtin:uci-digits`` for messages."""
        shown = ", ".join(repr(c) for c in self.classes[:SHOWN])
        more = ", ..." if len(self.classes) > SHOWN else ""
        return f"{len(self.classes)} classes ({shown}{more}) of {self.target}"


def target_identity(spec, project_dir: Path) -> str:
    """``builtin:NAME`` or ``folder:NAME`` (the folder's own name) of a ``data.target``."""
    if spec.builtin is not None:
        return f"builtin:{spec.builtin}"
    import os

    # the folder as the user named it (the name the model is called after): neither a
    # symlink's target nor the ``images/`` inside it that the loader may descend into
    return f"folder:{Path(os.path.abspath(project_dir / Path(spec.path).expanduser())).name}"


def task_of(spec, project_dir: Path) -> Task:
    """The task of a ``data.target`` section, known before any work: its label space in the
    order the model predicts it (``classes`` when set, else a built-in's declared classes
    or the folder's class folders, as tasks/stages/preflight.py takes them) and its identity.
    """
    if spec.classes:
        classes = tuple(spec.classes)
    elif spec.builtin is not None:
        from tasks.data.builtins import get_builtin

        classes = tuple(get_builtin(spec.builtin).classes)
    else:
        from tasks.data.folders import resolve_dir
        from tasks.data.ingest import scan_image_folder

        classes = tuple(scan_image_folder(resolve_dir(spec.path, project_dir)).classes)
    return Task(classes, target_identity(spec, project_dir))


def from_tags(tags: dict[str, str]) -> Task | None:
    """The task recorded in registered-model or version tags; None when none is."""
    if TASK_ID not in tags:
        return None
    try:
        classes = tuple(json.loads(tags.get(TASK_CLASSES, "[]")))
    except ValueError:
        classes = ()
    return Task(classes, tags.get(TASK_TARGET, "unknown"))


def conflict(name: str, task: Task, model_tags: dict[str, str], versions: int) -> str | None:
    """Why ``task`` must not register into or be compared in model ``name`` (None: it may).

    A model made before tasks were recorded (no ``tlp.task.id``) with versions cannot say
    which task they are, so it is refused too; one without versions is adopted."""
    fix = "--set registry.model_name=NEW"
    derived = _derived_name(task)
    if derived != name:
        fix += f", or leave registry.model_name null to register under {derived}"
    recorded = from_tags(model_tags)
    if recorded is None:
        if versions == 0:
            return None
        return (
            f"registry.model_name: model {name!r} has {versions} version(s) registered before "
            f"tlp recorded tasks, so their task is unknown and may differ from this one "
            f"({task.describe()}); treated as another task: {fix}; or, if they are this "
            f"task, adopt the model by setting its tag {TASK_ID}={task.id}"
        )
    if model_tags.get(TASK_ID) == task.id:
        return None
    return (
        f"registry.model_name: model {name!r} belongs to another task ({recorded.describe()}), "
        f"not this run's ({task.describe()}); its versions cannot be compared: {fix}"
    )


def _derived_name(task: Task) -> str | None:
    """The name ``registry.model_name: null`` gives this task's target."""
    from tasks.core.params.tree import derived_model_name

    kind, _, value = task.target.partition(":")
    return derived_model_name(
        value if kind == "builtin" else None, value if kind in ("folder", "path") else None
    )


def check_model(name: str, task: Task) -> None:
    """``TaskConflict`` when the registry's model ``name`` belongs to another task. A model
    not in the store yet is free (``ensure_model`` creates it with the task's tags)."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    client = MlflowClient()
    try:
        model = client.get_registered_model(name)
    except MlflowException as exc:
        if getattr(exc, "error_code", "") == "RESOURCE_DOES_NOT_EXIST":
            return
        raise
    versions = len(client.search_model_versions(f"name='{name}'", max_results=1000))
    problem = conflict(name, task, dict(model.tags), versions)
    if problem:
        raise TaskConflict(problem)


def check_model_sqlite(db: Path, name: str, task: Task) -> None:
    """``check_model`` for a SQLite store, read with sqlite3: no MLflow import, so a run
    with nothing to do stays instant (tasks/core/uptodate.py). A store without MLflow's
    tables holds no model."""
    import sqlite3

    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as con:
            if not con.execute(
                "SELECT 1 FROM registered_models WHERE name = ?", (name,)
            ).fetchone():
                return
            tags = dict(
                con.execute(
                    "SELECT key, value FROM registered_model_tags WHERE name = ?", (name,)
                ).fetchall()
            )
            (versions,) = con.execute(
                "SELECT COUNT(*) FROM model_versions WHERE name = ?", (name,)
            ).fetchone()
    except sqlite3.Error:
        return
    problem = conflict(name, task, tags, int(versions))
    if problem:
        raise TaskConflict(problem)


def ensure_model(name: str, task: Task) -> None:
    """Create model ``name`` with the task's tags, or tag a model that has none (checked to
    be free by ``check_model`` first); a model of another task raises ``TaskConflict``."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    check_model(name, task)
    client = MlflowClient()
    try:
        tags = dict(client.get_registered_model(name).tags)
    except MlflowException:
        client.create_registered_model(name, tags=task.tags())
        return
    for key, value in task.tags().items():  # a model without them, or adopted by its id
        if key not in tags:
            client.set_registered_model_tag(name, key, value)


def version_task(tags: dict[str, str]) -> str | None:
    """A version's ``tlp.task.id`` (None for a version registered before tasks were)."""
    return tags.get(TASK_ID)


def registration_incomplete(tags: dict[str, str]) -> bool:
    """A version whose register stage did not finish: flagged ``incomplete`` by ``tlp audit``,
    or one that records a task (registered by this code) without the completion tag."""
    state = tags.get(REGISTRATION)
    return state == INCOMPLETE or (state is None and TASK_ID in tags)
