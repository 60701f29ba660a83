"""The champion's own target test split, by its DVC hash, whatever ``data/`` holds now.

The gate compares two versions on the test split the champion was judged on: the version tag
``dvc.data/target`` (tasks/registry/publishing.py ``lineage_tags``) names that data exactly.
When the workspace's ``data/target`` is that data (its manifest is the recorded one), it is
read in place; otherwise the manifest and the test split's shards are copied out of the DVC
cache by that hash, pulling the missing objects from the DVC remote first. When neither holds
them, ``TargetUnavailable`` says which data is missing, and the gate keeps the champion.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

TARGET = "data/target"
MANIFEST = "manifest.parquet"


class TargetUnavailable(RuntimeError):
    """The champion's target data is neither in the workspace nor in the DVC cache or remote."""


def workspace_hash(project_dir: Path) -> str | None:
    """dvc.lock's hash of ``data/target`` when the workspace still holds that data."""
    from tasks.core import versioning

    return versioning.current_dir_hashes(project_dir, {TARGET: MANIFEST}).get(TARGET)


@contextmanager
def target_dir(project_dir: Path, digest: str | None) -> Iterator[tuple[Path, str]]:
    """A folder holding the manifest and test shards of ``data/target`` at DVC hash
    ``digest``, and that hash; None (a version registered without it): the workspace's."""
    here = workspace_hash(project_dir)
    if digest in (None, "", "unknown") or digest == here:
        yield project_dir / TARGET, digest or here or "unknown"
        return
    with tempfile.TemporaryDirectory(prefix="tlp-gate-target-") as tmp:
        yield materialize(project_dir, digest, Path(tmp) / "target"), digest


def materialize(project_dir: Path, digest: str, out: Path) -> Path:
    """Copy the manifest and the test shards of the directory object ``digest`` from the
    project's DVC cache into ``out`` (pulled from the default remote when missing)."""
    from tasks.core import versioning

    try:
        with versioning.open_repo(project_dir) as repo:
            entries = _listing(repo, digest)
            wanted = _test_entries(repo, entries, out)
            _fetch(repo, [oid for _, oid in wanted])
            for rel, oid in wanted:
                dst = out / rel
                dst.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(repo.cache.local.oid_to_path(oid), dst)
    except TargetUnavailable:
        raise
    except Exception as exc:  # no repository, no remote, an unreadable listing
        raise TargetUnavailable(_missing(digest, f"{type(exc).__name__}: {exc}")) from None
    return out


def _missing(digest: str, why: str) -> str:
    return (
        f"the champion's target data (data/target, DVC hash {digest}) is not in the "
        f"workspace, the DVC cache or the remote ({why})"
    )


def _fetch(repo, oids: list[str]) -> None:
    """Pull the objects the local cache lacks from the default remote."""
    from dvc_data.hashfile.hash_info import HashInfo

    cache = repo.cache.local
    absent = [oid for oid in oids if not Path(cache.oid_to_path(oid)).is_file()]
    if not absent:
        return
    try:
        result = repo.cloud.pull([HashInfo("md5", oid) for oid in absent])
        failed = len(result.failed)
    except Exception as exc:  # no remote configured, unreachable
        raise TargetUnavailable(_missing(absent[0], str(exc))) from None
    if failed:
        raise TargetUnavailable(_missing(absent[0], f"{failed} object(s) missing"))


def _listing(repo, digest: str) -> dict[str, str]:
    """``{relative path: md5}`` of the directory object ``digest`` (from the remote if the
    cache lacks the listing)."""
    from dvc_data.hashfile.hash_info import HashInfo
    from dvc_data.hashfile.tree import Tree

    oid = digest if digest.endswith(".dir") else f"{digest}.dir"
    _fetch(repo, [oid])
    tree = Tree.load(repo.cache.local, HashInfo("md5", oid))
    return {"/".join(key): hi.value for key, _, hi in tree}


def _test_entries(repo, entries: dict[str, str], out: Path) -> list[tuple[str, str]]:
    """The manifest (copied first, to read) and the test split's shards it lists (for data
    prepared before shards: the test images)."""
    from tasks.data.manifest import read_manifest

    if MANIFEST not in entries:
        raise TargetUnavailable(f"data/target object lists no {MANIFEST}")
    _fetch(repo, [entries[MANIFEST]])
    out.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(repo.cache.local.oid_to_path(entries[MANIFEST]), out / MANIFEST)
    manifest = read_manifest(out)
    test = manifest[manifest["split"] == "test"]
    # the test split's shards; data prepared before shards lists one file per image
    column = "shard" if "shard" in manifest.columns else "path"
    needed = sorted({str(p) for p in test[column]})
    missing = [p for p in needed if p not in entries]
    if missing:
        raise TargetUnavailable(f"data/target object lacks {missing[0]}")
    return [(p, entries[p]) for p in needed]
