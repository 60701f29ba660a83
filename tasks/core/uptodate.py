"""``tlp run``'s shortcut when nothing changed: decided in well under a second, before torch,
Prefect or MLflow are imported and before a Prefect API server is started.

After every successful flow run, ``record`` writes ``.tlp/uptodate.json``: a fingerprint of
everything that decides whether the flow would do any work, and what the run produced (model
version, the promotion gate's outcome, Prefect flow run, MLflow run, accuracies). ``check``
recomputes the fingerprint; only when it is identical does ``tlp run`` print that nothing
changed instead of running the flow.

The fingerprint covers, conservatively:

* the resolved params (params.yaml + profile + ``--set`` + environment) through
  ``Params.digest()``: every section but ``storage``, so a store moved elsewhere (with its
  contents, below) is no change;
* ``dvc.yaml`` and ``dvc.lock`` byte for byte;
* every dependency and output path recorded in dvc.lock (stage code, data, checkpoints,
  reports), as (path, size, mtime) of each file below it: the same signal DVC's own state
  database trusts before it re-hashes a file;
* a dataset given as ``path:`` outside the project, the same way;
* the file behind ``pretrain.checkpoint`` (the same way), a built-in checkpoint's package
  version, or a registered checkpoint's versions and aliases: the params hold only its name;
* the tool's own code (``tasks/``, ``flows/``);
* the local DVC remote's files (a push would send something);
* the registered model's versions and aliases, read straight from the MLflow SQLite store;
* and, once all of that matched, the checkpoints' bytes against dvc.lock's hashes
  (``versioning.corrupted_outputs``): a corrupted DVC cache object restored by ``dvc
  checkout`` looks unchanged to every signal above.

Anything it cannot check cheaply (an MLflow server, an S3 remote) means "changed": the flow
runs and DVC decides stage by stage, as without the shortcut.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import time
from pathlib import Path
from typing import Any

import yaml

from tasks.core.params import RESOLVED_PARAMS_FILE, Params
from tasks.core.params.storage import resolve_tracking_uri

RECORD = ".tlp/uptodate.json"
TOOL_ROOT = Path(__file__).resolve().parents[1]
TOOL_DIRS = ("tasks", "flows")


class CannotCheck(Exception):
    """The state cannot be checked cheaply (the message says why): run the flow."""


def tree_signature(path: Path, digest: Any) -> None:
    """Feed (relative path, size, mtime) of ``path`` or every file below it into ``digest``."""
    if path.is_file():
        st = path.stat()
        digest.update(f"{path.name}|{st.st_size}|{st.st_mtime_ns}|{st.st_ino}\n".encode())
        return
    if not path.is_dir():
        digest.update(f"{path}|missing\n".encode())
        return
    for dirpath, dirnames, filenames in os.walk(path):
        dirnames[:] = sorted(d for d in dirnames if d != "__pycache__")
        for name in sorted(filenames):
            file = Path(dirpath) / name
            st = file.stat()
            digest.update(
                f"{file.relative_to(path)}|{st.st_size}|{st.st_mtime_ns}|{st.st_ino}\n".encode()
            )


def _lock_paths(lock_text: str) -> list[str]:
    lock = yaml.safe_load(lock_text) or {}
    paths = set()
    for stage in (lock.get("stages") or {}).values():
        for entry in [*(stage.get("deps") or []), *(stage.get("outs") or [])]:
            paths.add(entry["path"])
    return sorted(paths)


def _registry_state(tracking_uri: str, model_name: str) -> list:
    """Versions and aliases of the registered model, from the SQLite store without MLflow."""
    prefix = "sqlite:///"
    if not tracking_uri.startswith(prefix):
        raise CannotCheck(f"the MLflow store {tracking_uri} is not a local SQLite file")
    db = Path(tracking_uri[len(prefix) :])
    if not db.is_file():
        raise CannotCheck(f"{db} does not exist")
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        versions = con.execute(
            "SELECT version, current_stage, status FROM model_versions WHERE name = ? "
            "ORDER BY version",
            (model_name,),
        ).fetchall()
        aliases = con.execute(
            "SELECT alias, version FROM registered_model_aliases WHERE name = ? ORDER BY alias",
            (model_name,),
        ).fetchall()
    except sqlite3.Error as exc:
        raise CannotCheck(f"{db}: {exc}") from None
    finally:
        con.close()
    return [[list(v) for v in versions], [list(a) for a in aliases]]


def checkpoint_signature(params: Params, project_dir: Path, digest: Any) -> None:
    """What ``pretrain.checkpoint`` names now: its file, its package, its registered versions."""
    from importlib.metadata import PackageNotFoundError, version

    from tasks.core.params.checkpoints import BUILTIN_CHECKPOINTS, parse_checkpoint

    if params.pretrain.checkpoint is None:
        return
    spec = parse_checkpoint(params.pretrain.checkpoint)
    digest.update(f"## checkpoint {spec}\n".encode())
    if spec.kind == "file":
        tree_signature((project_dir / Path(spec.value).expanduser()).resolve(), digest)
    elif spec.kind == "builtin":
        package = BUILTIN_CHECKPOINTS[spec.value].package.split("==")[0]
        try:
            digest.update(version(package).encode())
        except PackageNotFoundError:
            digest.update(b"missing")
    elif spec.kind == "registry":
        name = spec.value.removeprefix("models:/").split("@")[0].rsplit("/", 1)[0]
        state = _registry_state(_tracking_uri(params, project_dir), name)
        digest.update(json.dumps(state).encode())


def _tracking_uri(params: Params, project_dir: Path) -> str:
    return resolve_tracking_uri(params.storage.tracking_uri, project_dir)


def fingerprint(project_dir: Path, params: Params) -> str:
    """One digest of everything listed in the module docstring; CannotCheck if it can't be."""
    project_dir = project_dir.resolve()
    digest = hashlib.sha256()
    digest.update(params.digest().encode())
    for name in ("dvc.yaml", "dvc.lock"):
        file = project_dir / name
        if not file.is_file():
            raise CannotCheck(f"{name} does not exist yet")
        digest.update(file.read_bytes())
    for rel in _lock_paths((project_dir / "dvc.lock").read_text()):
        digest.update(f"## {rel}\n".encode())
        tree_signature(project_dir / rel, digest)
    for spec in (params.data.source, params.data.target):
        if spec.path is not None:
            root = Path(spec.path).expanduser()
            tree_signature(root if root.is_absolute() else project_dir / root, digest)
    checkpoint_signature(params, project_dir, digest)
    for name in TOOL_DIRS:
        tree_signature(TOOL_ROOT / name, digest)
    remote = params.storage.dvc_remote
    if "://" in remote:
        raise CannotCheck(f"the DVC remote {remote} is not a local directory")
    tree_signature(project_dir / remote, digest)
    state = _registry_state(_tracking_uri(params, project_dir), params.registry.model_name)
    digest.update(json.dumps(state).encode())
    return digest.hexdigest()


def record(project_dir: Path, params: Params, summary: dict) -> Path | None:
    """After a successful flow run: remember its fingerprint and what it produced."""
    try:
        value = fingerprint(project_dir, params)
    except (CannotCheck, OSError):  # never fail a finished run over it: no shortcut next time
        value = None
    keep = (  # what the shortcut's message says: the same as the run's own summary
        "model_name",
        "version",
        "registered_strategy",
        "champion_alias",
        "challenger_alias",
        "promotion",
        "best",
        "selected_on",
        "candidates",
        "transfer_gain",
        "negative_transfer",
        "tracking_uri",
        "ui_command",
        "mlflow_run_id",
        "prefect_flow_run_id",
        "prefect_flow_run_name",
        "wall_seconds",
        "stage_seconds",  # its keys: the stages it skips, transfer@NAME per candidate
    )
    payload = {
        "fingerprint": value,
        "finished": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "summary": {k: summary[k] for k in keep if k in summary},
    }
    path = project_dir / RECORD
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(payload, indent=2) + "\n")
    os.replace(tmp, path)
    return path


def check(project_dir: Path, params: Params) -> tuple[dict | None, str]:
    """(the last run's record, "") when nothing changed since it; else (None, why not)."""
    path = project_dir / RECORD
    if not path.is_file():
        return None, "no earlier successful run recorded"
    try:
        saved = json.loads(path.read_text())
    except (OSError, ValueError):
        return None, f"{path} is unreadable"
    if not (project_dir / RESOLVED_PARAMS_FILE).is_file():
        return None, f"{RESOLVED_PARAMS_FILE} is missing"
    try:
        value = fingerprint(project_dir, params)
    except (CannotCheck, OSError) as exc:
        return None, str(exc)
    if value != saved.get("fingerprint"):
        return None, "params, data, code, dvc.lock or the registry changed"
    corrupted = _corrupted(project_dir)
    if corrupted:
        return None, corrupted
    return saved, ""


def _corrupted(project_dir: Path) -> str:
    """Why the checkpoints cannot be trusted ("" when they can): the fingerprint sees file
    sizes and times, not a cache object corrupted in place and restored by ``dvc checkout``,
    so the checkpoints' bytes are hashed against dvc.lock before "up to date" is said (the
    flow then finds the same and rebuilds, ``versioning.corrupted_outputs``). Without
    importing DVC: dvc.lock gives each output's md5, a directory's per-file md5s are its
    ``.dir`` listing in the cache (DVC 3's ``files/md5/`` layout)."""
    from tasks.core.versioning import VERIFIED_OUTPUTS, md5_file

    lock = yaml.safe_load((project_dir / "dvc.lock").read_text()) or {}
    cache = _cache_dir(project_dir)
    for stage in (lock.get("stages") or {}).values():
        for out in stage.get("outs") or []:
            path, md5 = out.get("path", ""), str(out.get("md5") or "")
            if not path.startswith(VERIFIED_OUTPUTS) or not md5:
                continue
            files = [(path, md5)]
            if md5.endswith(".dir"):
                listing = cache / "files" / "md5" / md5[:2] / md5[2:]
                try:
                    entries = json.loads(listing.read_text())
                    files = [(f"{path}/{e['relpath']}", e["md5"]) for e in entries]
                except (OSError, ValueError, KeyError, TypeError):
                    return f"the listing of {path} in the DVC cache is missing or unreadable"
            for rel, expected in files:
                file = project_dir / rel
                if file.is_file() and md5_file(file) != expected:
                    return f"{rel} does not match its hash in dvc.lock (corrupted)"
    return ""


def _cache_dir(project_dir: Path) -> Path:
    """The DVC cache: ``cache.dir`` of the repository's config files, else ``.dvc/cache``."""
    import configparser

    cache = project_dir / ".dvc" / "cache"
    for name in ("config", "config.local"):
        config = configparser.ConfigParser()
        try:
            config.read(project_dir / ".dvc" / name)
        except configparser.Error:
            continue
        if config.has_option("cache", "dir"):
            cache = (project_dir / ".dvc" / config.get("cache", "dir")).resolve()
    return cache


def aliases(params: Params, project_dir: Path, version: str) -> list[str]:
    """Current aliases of ``version`` (from the SQLite store), for the message."""
    state = _registry_state(_tracking_uri(params, project_dir), params.registry.model_name)
    return [alias for alias, v in state[1] if str(v) == str(version)]
