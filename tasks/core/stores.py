"""The stores a project last used, so a lost or replaced one is noticed before the next run.

MLflow creates an empty SQLite store wherever ``storage.tracking_uri`` points, and DVC pushes
to an empty remote without a word; a deleted ``mlflow.db`` then made a fresh registry in which
the next run's model became ``@champion`` unopposed. So after each successful run the flow
writes ``.tlp/stores.json``: the resolved tracking URI, the experiment id, the model name and
its last version, the DVC remote. Before the next ``tlp run`` does any work, ``check`` stops it
when that same store is now gone or empty: a SQLite file missing, or holding neither the
experiment nor the model; a local-directory remote that held pushed data missing or empty.
``tlp run --new-store`` starts afresh on purpose (the record is rewritten after that run).

A store the user pointed elsewhere (another URI or remote) is a choice, not a loss, and is not
checked; a tracking server is not queried here (it may be slow to answer; a lost server store
shows as a server error).
"""

from __future__ import annotations

import json
import os
import sqlite3
from datetime import UTC, datetime
from pathlib import Path

from tasks.core.params import ParamsError
from tasks.core.params.storage import resolve_tracking_uri

RECORD = Path(".tlp") / "stores.json"
FIX = (
    "restore it, point storage.tracking_uri / storage.dvc_remote (or TLP_TRACKING_URI / "
    "TLP_DVC_REMOTE) at where it is now, or pass `tlp run --new-store` to start afresh on purpose"
)


class StoreMissing(ParamsError):
    """The tracking store or DVC remote the project last used is gone or empty."""


def remote_url(url: str, project_dir: Path) -> str:
    """A DVC remote as ``versioning.ensure_remote`` writes it: directories made absolute."""
    return url if "://" in url else str((project_dir / url).resolve())


def record(
    project_dir: Path, tracking_uri: str, experiment_id: str, model: tuple[str, str], remote: str
) -> Path:
    """Write what this successful run used (``model`` is (name, last version))."""
    path = project_dir / RECORD
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "tracking_uri": tracking_uri,
        "experiment_id": str(experiment_id),
        "model_name": model[0],
        "last_version": str(model[1]),
        "dvc_remote": remote,
        "dvc_remote_pushed": True,
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(payload, indent=2) + "\n")
    tmp.replace(path)
    return path


def read(project_dir: Path) -> dict | None:
    try:
        return json.loads((project_dir / RECORD).read_text())
    except (OSError, ValueError):
        return None


def check(params, project_dir: Path) -> None:
    """``StoreMissing`` when the store or remote the last run used is gone or empty."""
    saved = read(project_dir)
    if saved is None:
        return
    uri = resolve_tracking_uri(params.storage.tracking_uri, project_dir)
    if uri == saved.get("tracking_uri") and uri.startswith("sqlite:///"):
        problem = _sqlite_problem(Path(uri.removeprefix("sqlite:///")), saved)
        if problem:
            raise StoreMissing(f"storage.tracking_uri: {problem}; {FIX}")
    remote = remote_url(params.storage.dvc_remote, project_dir)
    if remote == saved.get("dvc_remote") and saved.get("dvc_remote_pushed"):
        problem = _remote_problem(remote)
        if problem:
            raise StoreMissing(f"storage.dvc_remote: {problem}; {FIX}")


def _last(saved: dict) -> str:
    return (
        f"the last run ({saved.get('when', '?')}) registered {saved.get('model_name')} "
        f"version {saved.get('last_version')} there"
    )


def _sqlite_problem(db: Path, saved: dict) -> str | None:
    """What is missing from the SQLite store the last run used, read with sqlite3 (fast, no
    MLflow import): the file, its experiment, or its registered model."""
    if not db.is_file():
        return f"the MLflow store {db} is gone ({_last(saved)})"
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as con:
            experiment = con.execute(
                "SELECT lifecycle_stage FROM experiments WHERE experiment_id = ?",
                (int(saved.get("experiment_id") or -1),),
            ).fetchone()
            model = con.execute(
                "SELECT name FROM registered_models WHERE name = ?", (saved.get("model_name"),)
            ).fetchone()
    except (sqlite3.Error, ValueError) as exc:
        return f"the MLflow store {db} cannot be read ({exc}; {_last(saved)})"
    if experiment is None or experiment[0] != "active":
        return (
            f"the MLflow store {db} no longer holds experiment {saved.get('experiment_id')} "
            f"(replaced or emptied; {_last(saved)})"
        )
    if model is None:
        return (
            f"the MLflow store {db} no longer holds model {saved.get('model_name')} "
            f"(replaced or emptied; {_last(saved)})"
        )
    return None


def _remote_problem(url: str) -> str | None:
    """A local-directory remote that held pushed data and is now missing or empty."""
    if "://" in url:
        return None  # s3:// and the like: not listed here (slow, credentials)
    folder = Path(url)
    if not folder.is_dir():
        return f"the DVC remote {folder} that held this project's pushed data is gone"
    with os.scandir(folder) as entries:
        if next(entries, None) is None:
            return f"the DVC remote {folder} that held this project's pushed data is empty"
    return None
