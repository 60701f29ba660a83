"""DVC through its Python API: stage status, commit to dvc.lock and cache, push, lineage hashes.

The Prefect flow runs each stage's function in-process (no subprocess start-up per stage),
then ``commit_stage`` records what it produced exactly as ``dvc repro`` would; ``Background``
does those commits, and the final push, in a thread while the flow goes on.

DVC works in the project as the working directory, which is the process's: one DVC
operation runs at a time in a process (``open_repo`` holds ``DVC_LOCK``), so a stage that
reads dvc.lock while a commit runs in the background reads it after that commit.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from contextlib import chdir, contextmanager
from dataclasses import dataclass
from pathlib import Path

REMOTE_NAME = "tlp"
# outputs whose content is verified before their stage is skipped: the checkpoints, which a
# corrupted cache object turns into a model that will not load (reports are rewritten often
# and cheap to notice; data is pinned by its manifest's hashes)
VERIFIED_OUTPUTS = ("models/",)
log = logging.getLogger(__name__)
DVC_LOCK = threading.RLock()  # one DVC operation at a time in this process (module docstring)


class VersioningError(RuntimeError):
    """DVC could not check, record or push a stage."""


@contextmanager
def open_repo(project_dir: Path):
    import logging

    logging.getLogger("dvc").setLevel(logging.WARNING)  # no "Updating lock file" per stage
    from dvc.exceptions import NotDvcRepoError
    from dvc.repo import Repo

    # DVC resolves some paths against the working directory
    with DVC_LOCK, chdir(project_dir):
        try:
            repo = Repo(str(project_dir))
        except NotDvcRepoError:
            raise VersioningError(f"{project_dir}: not a DVC repository (run `dvc init`)") from None
        try:
            yield repo
        finally:
            repo.close()


def stage_changes(project_dir: Path, stage: str) -> dict:
    """What DVC says changed for one stage (empty when it is up to date)."""
    with open_repo(project_dir) as repo:
        return repo.status(targets=[stage]).get(stage, {}) or {}


def recorded_stages(project_dir: Path) -> set[str]:
    """The stages dvc.lock records (read after any commit in flight: ``DVC_LOCK``)."""
    import yaml

    with DVC_LOCK:
        try:
            text = (project_dir / "dvc.lock").read_text()
        except FileNotFoundError:
            return set()
    loaded = yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader)) or {}
    return set(loaded.get("stages") or {})


def is_up_to_date(project_dir: Path, stage: str, recorded: set[str] | None = None) -> bool:
    """True when the stage's deps, params and outs match dvc.lock. A stage dvc.lock does not
    record (``recorded``: ``recorded_stages``, read now when not given) is not, without
    asking DVC (which would parse dvc.yaml and dvc.lock and hash the stage's deps first: on
    a first run the commit hashes them, off the critical path)."""
    if stage not in (recorded_stages(project_dir) if recorded is None else recorded):
        return False
    with open_repo(project_dir) as repo:
        return not repo.status(targets=[stage])


@dataclass(frozen=True)
class Corrupted:
    """A file of a stage output whose content is not what dvc.lock recorded."""

    stage: str
    path: str  # relative to the project
    expected: str  # md5 in dvc.lock (or the directory listing it points to)
    cache_object: str | None  # the cache file holding that md5, if DVC can say where

    def line(self) -> str:
        return (
            f"{self.stage}: {self.path} does not match its hash in dvc.lock (md5 "
            f"{self.expected[:12]}...: a corrupted DVC cache object or file); rebuilding "
            f"{self.stage}"
        )


def md5_file(path: Path) -> str:
    """The md5 DVC 3 records for a file (of its bytes as they are)."""
    with path.open("rb") as fh:
        return hashlib.file_digest(fh, "md5").hexdigest()


def _recorded_files(out) -> list[tuple[str, str]] | None:
    """(relative path, md5) of each file of one output as dvc.lock records it; a directory
    through its ``.dir`` listing in the cache (None when that listing is missing or bad)."""
    path = str(out.def_path)
    if not out.is_dir_checksum:
        return [(path, out.hash_info.value)]
    tree = out.get_obj()
    if tree is None:
        return None
    return [(os.path.join(path, *key), hi.value) for key, _, hi in tree]


def corrupted_outputs(
    project_dir: Path, stage: str | None = None, under: tuple[str, ...] = VERIFIED_OUTPUTS
) -> list[Corrupted]:
    """Files of the outputs of ``stage`` (every stage: None) below ``under`` whose actual
    content hash differs from dvc.lock's. DVC itself trusts its state database (size,
    mtime, inode) and a ``dvc checkout`` from a corrupted cache object records the expected
    hash for the bad copy, so ``dvc status`` says up to date; this reads the bytes. Only
    present files are hashed (a missing one DVC reports itself), and only what is asked
    for: the flow asks for a stage it is about to skip."""
    found = []
    with open_repo(project_dir) as repo:
        for st in repo.index.stages:
            if stage is not None and st.name != stage:
                continue
            for out in st.outs:
                path = str(out.def_path)
                if not out.use_cache or not out.hash_info or not path.startswith(under):
                    continue
                files = _recorded_files(out)
                if files is None:  # the directory's listing is gone from the cache
                    found.append(Corrupted(st.name, path, out.hash_info.value, None))
                    continue
                for rel, md5 in files:
                    file = project_dir / rel
                    if file.is_file() and md5_file(file) != md5:
                        found.append(Corrupted(st.name, rel, md5, out.cache.oid_to_path(md5)))
    return found


def discard_corrupted(project_dir: Path, corrupted: list[Corrupted]) -> None:
    """Remove each bad file and, when it is bad too, the cache object it came from: DVC then
    sees the output changed and the stage reruns, and the commit after it writes a good
    object instead of keeping the bad one."""
    for bad in corrupted:
        log.warning("%s", bad.line())
        target = project_dir / bad.path
        if target.is_file():
            target.unlink()
        elif target.is_dir():
            import shutil

            shutil.rmtree(target)
        obj = Path(bad.cache_object) if bad.cache_object else None
        if obj is not None and obj.is_file() and md5_file(obj) != bad.expected:
            obj.chmod(0o644)
            obj.unlink()


def commit_stage(project_dir: Path, stage: str) -> None:
    """Record the stage's deps, params and outs in dvc.lock and copy outs into the cache."""
    with open_repo(project_dir) as repo:
        repo.commit(stage, force=True)


class Background:
    """DVC commits and the push, one at a time and in order, in a thread of their own.

    ``commit(stage)`` returns once the thread holds ``DVC_LOCK``: whatever reads DVC next
    (the next stage's status, a stage reading dvc.lock) waits for that commit, so it sees
    what a commit in line would have left. The flow calls ``commit`` for a stage after the
    next stage's status is known, so the commit runs while the next stage computes (which
    never writes another stage's outputs: DVC's outputs are disjoint). ``wait`` returns the
    seconds it waited and raises what the commit or push raised, so a failed commit fails
    the run before the push, and the remote changes only after every commit succeeded.
    """

    def __init__(self, project_dir: Path) -> None:
        from concurrent.futures import ThreadPoolExecutor

        self.project_dir = project_dir
        # a symlink cache replaces each output file by a link as it commits: the next stage
        # could find one missing, so such a project commits in line (copies, reflinks and
        # hardlinks leave the workspace's files where they are)
        with open_repo(project_dir) as repo:
            self.in_line = "symlink" in (repo.cache.local.cache_types or ())
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="dvc")
        self._pending = None
        self.seconds = 0.0  # spent in the thread: DVC work taken off the critical path

    def _submit(self, work, *args, hold: bool) -> None:
        self.check()
        previous = self._pending
        holding = threading.Event()

        def job():
            if previous is not None:
                previous.result()  # in order: nothing runs after a failed commit
            with DVC_LOCK:
                holding.set()
                started = time.perf_counter()
                try:
                    return work(*args)
                finally:
                    self.seconds += time.perf_counter() - started

        self._pending = self._pool.submit(job)
        while hold and not holding.wait(0.05) and not self._pending.done():
            pass  # it failed before it held the lock: check() or wait() raises it

    def commit(self, stage: str) -> None:
        """Commit ``stage`` once what is in flight is done; returns when it holds the lock
        (in line: when it is done)."""
        self._submit(commit_stage, self.project_dir, stage, hold=True)
        if self.in_line:
            self.wait()

    def push(self) -> None:
        """Push once every commit in flight succeeded; returns at once."""
        self._submit(push, self.project_dir, hold=False)

    def check(self) -> None:
        """Raise now what finished work raised (a failed commit stops the run early)."""
        if self._pending is not None and self._pending.done():
            self.wait()

    def wait(self) -> float:
        """Seconds waited for the work in flight; raises what it raised."""
        pending, self._pending = self._pending, None
        if pending is None:
            return 0.0
        started = time.perf_counter()
        pending.result()
        return time.perf_counter() - started

    def close(self) -> None:
        """Let the work in flight finish (a failure elsewhere keeps what it committed, as a
        commit in line would have), logging its own failure; stop the thread."""
        try:
            self.wait()
        except Exception as exc:
            log.error("DVC: %s", exc)
        finally:
            self._pool.shutdown(wait=True)


def ensure_remote(project_dir: Path, url: str, endpoint: str | None = None) -> str:
    """Make ``url`` (a directory, relative to the project, or any DVC URL) the default remote.

    Written to ``.dvc/config.local`` so a params value never edits a tracked file. ``endpoint``
    points an ``s3://`` remote at an S3-compatible server (MinIO); keys come from the usual
    ``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY`` environment, never from params.
    """
    if "://" not in url:
        url = str((project_dir / url).resolve())
    remote = {"url": url}
    if endpoint:
        remote["endpointurl"] = endpoint
    with open_repo(project_dir) as repo, repo.config.edit("local") as conf:
        conf["remote"][REMOTE_NAME] = remote
        conf["core"]["remote"] = REMOTE_NAME
    return url


def push(project_dir: Path) -> int:
    """Push every tracked output to the default remote; returns the number of files sent."""
    with open_repo(project_dir) as repo:
        return int(repo.push() or 0)


def output_hashes(project_dir: Path) -> dict[str, str]:
    """``{output path: hash}`` for every stage output recorded in dvc.lock."""
    hashes = {}
    with open_repo(project_dir) as repo:
        for stage in repo.index.stages:
            for out in stage.outs:
                if out.hash_info and out.hash_info.value:
                    hashes[str(out.def_path)] = out.hash_info.value
    return hashes


def current_dir_hashes(project_dir: Path, pinned: dict[str, str]) -> dict[str, str]:
    """dvc.lock's hash of each directory output in ``pinned`` that still describes what is on
    disk, judged by one file inside it (``{"data/target": "manifest.parquet"}``: a manifest
    holding every image's hash pins the rest). An output changed since it was recorded (a
    stage run without a commit, such as ``tlp validate``), not recorded, or a project that is
    no DVC repository is left out. Cheap: reads the recorded listing from the DVC cache and
    hashes that one file, never the images."""
    import hashlib

    found = {}
    try:
        with open_repo(project_dir) as repo:
            for stage in repo.index.stages:
                for out in stage.outs:
                    path = str(out.def_path)
                    if path not in pinned or not (out.hash_info and out.hash_info.value):
                        continue
                    on_disk = project_dir / path / pinned[path]
                    recorded = {key: hi.value for key, _, hi in out.get_obj() or ()}
                    wanted = recorded.get(tuple(Path(pinned[path]).parts))
                    if (
                        on_disk.is_file()
                        and wanted == hashlib.md5(on_disk.read_bytes()).hexdigest()
                    ):
                        found[path] = out.hash_info.value
    except Exception:  # no repository, no lock, a listing missing from the cache: not known
        return found
    return found


def git_revision(project_dir: Path) -> tuple[str, bool]:
    """(commit sha or 'none', dirty) of the project's git repository."""
    with open_repo(project_dir) as repo:
        try:
            return repo.scm.get_rev(), bool(repo.scm.is_dirty(untracked_files=False))
        except Exception:  # a repo with no commit yet
            return "none", True
