"""What a killed run leaves behind, found and ended by the next run of the project.

``kill -9`` (or a power cut) gives a process no chance to clean up: its MLflow runs stay
RUNNING for ever, and a DVC copy cut short leaves its temporary file beside the objects. The
next pipeline run, holding the project's run lock (so no other writer of this project is
alive), ends them before it starts its own work:

- MLflow runs carry the pid, host and start time of the process that opened them
  (``process_tags``); a RUNNING run of this host whose process is gone is marked FAILED,
  with a tag saying the clean-up ended it. Runs of other hosts are never touched.
- DVC (dvc-objects) writes each object to ``.<random 22 chars>.tmp`` beside it, then renames
  it: such a file is a copy that never finished. Those in the project's cache are removed;
  in a local remote, which other projects may share, only those older than
  ``REMOTE_TMP_AGE`` (another project's push may be writing one now).

Registry leftovers (a version without its tags, an alias move without its audit record) are
reconciled by the registry's own check, not here.
"""

from __future__ import annotations

import logging
import os
import re
import socket
import time
from pathlib import Path

log = logging.getLogger(__name__)

PID_TAG, HOST_TAG, STARTED_TAG = "tlp.pid", "tlp.host", "tlp.process_started"
ENDED_TAG = "tlp.ended_by"
PARTIAL = re.compile(r"^\.[A-Za-z0-9_-]{22}\.tmp$")  # dvc_objects.fs.utils.tmp_fname
REMOTE_TMP_AGE = 3600.0  # seconds


def _started(pid: int) -> float | None:
    """When process ``pid`` started (seconds since the epoch), or None if there is none."""
    import psutil

    try:
        return psutil.Process(pid).create_time()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None


def process_tags() -> dict[str, str]:
    """Tags naming this process, set on every MLflow run it opens."""
    started = _started(os.getpid()) or time.time()
    return {
        PID_TAG: str(os.getpid()),
        HOST_TAG: socket.gethostname(),
        STARTED_TAG: f"{started:.2f}",
    }


def _process_gone(tags: dict[str, str]) -> bool:
    """The process the tags name has ended (a new process with its pid is another one)."""
    try:
        pid, started = int(tags[PID_TAG]), float(tags[STARTED_TAG])
    except (KeyError, ValueError):
        return False  # not opened by tlp (or by an older one): nothing is known about it
    if pid == os.getpid():
        return False
    now_started = _started(pid)
    return now_started is None or abs(now_started - started) > 1.0


def end_stale_runs(experiment_ids: list[str]) -> list[str]:
    """Mark FAILED the RUNNING runs of this host whose process is gone; returns their ids."""
    from mlflow import MlflowClient

    client, host = MlflowClient(), socket.gethostname()
    query = f"attributes.status = 'RUNNING' and tags.`{HOST_TAG}` = '{host}'"
    ended = []
    for run in client.search_runs(experiment_ids, filter_string=query, max_results=1000):
        tags = run.data.tags
        if not _process_gone(tags):
            continue
        why = f"stale-run clean-up: process {tags[PID_TAG]} on {host} ended without closing it"
        client.set_tag(run.info.run_id, ENDED_TAG, why)
        client.set_terminated(run.info.run_id, status="FAILED")
        ended.append(run.info.run_id)
    if ended:
        log.warning("marked %d run(s) of a killed process FAILED: %s", len(ended), ended)
    return ended


def remove_partial_files(folder: Path, min_age: float = 0.0) -> list[Path]:
    """Remove DVC's unfinished copies (``.<token>.tmp``) under ``folder`` older than
    ``min_age`` seconds; returns what was removed."""
    if not folder.is_dir():
        return []
    removed, now = [], time.time()
    for path in folder.rglob(".*.tmp"):
        if not PARTIAL.match(path.name) or not path.is_file():
            continue
        try:
            if now - path.stat().st_mtime >= min_age:
                path.unlink()
                removed.append(path)
        except OSError:
            continue
    if removed:
        log.warning("removed %d unfinished DVC file(s) under %s", len(removed), folder)
    return removed


def remove_dvc_partials(project_dir: Path, remote_url: str) -> list[Path]:
    """Unfinished copies in the project's DVC cache, and old ones in a local remote."""
    from tasks.core.versioning import open_repo

    with open_repo(project_dir) as repo:
        cache = Path(repo.cache.local.path)
    removed = remove_partial_files(cache, _min_age(cache, project_dir))
    if "://" not in remote_url:
        remote = Path(remote_url)
        removed += remove_partial_files(remote, _min_age(remote, project_dir))
    return removed


def _min_age(folder: Path, project_dir: Path) -> float:
    """No writer but this run inside the locked project; outside it, others may be writing."""
    inside = folder.resolve().is_relative_to(project_dir.resolve())
    return 0.0 if inside else REMOTE_TMP_AGE
