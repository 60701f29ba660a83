"""DVC commits and the push in a background thread (tasks/core/versioning.py ``Background``):
dvc.lock and the cache as a commit in line records them, the remote untouched after a failed
commit, and whatever reads DVC meanwhile waits for the commit. A real DVC repository
(no git) with two small stages (no `dvc repro`: the outputs are written here, then committed)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tasks.core import versioning

pytestmark = pytest.mark.integration

STAGES = """\
stages:
  first:
    cmd: "true"
    outs:
      - first
  second:
    cmd: "true"
    deps:
      - first
    outs:
      - second.txt
"""


@pytest.fixture
def project(tmp_path) -> Path:
    project = tmp_path / "p"
    project.mkdir()
    (project / "dvc.yaml").write_text(STAGES)
    from dvc.repo import Repo

    Repo.init(str(project), no_scm=True).close()  # in-process: no CLI start-up
    versioning.ensure_remote(project, "remote")
    (project / "first").mkdir()
    (project / "first" / "a.bin").write_bytes(bytes(range(256)) * 16)
    (project / "second.txt").write_text("two\n")
    return project


def test_background_commits_and_push_record_what_commits_in_line_do(project, tmp_path):
    assert versioning.recorded_stages(project) == set()
    assert not versioning.is_up_to_date(project, "first")  # not recorded: DVC is not asked
    bg = versioning.Background(project)
    try:
        bg.commit("first")
        assert not versioning.DVC_LOCK.acquire(blocking=False)  # held by the commit
        bg.commit("second")
        bg.push()
        bg.wait()
    finally:
        bg.close()
    lock = (project / "dvc.lock").read_text()
    assert bg.seconds > 0 and versioning.recorded_stages(project) == {"first", "second"}
    assert versioning.is_up_to_date(project, "second")
    (project / "dvc.lock").unlink()
    for stage in ("first", "second"):
        versioning.commit_stage(project, stage)
    assert (project / "dvc.lock").read_text() == lock
    assert sum(1 for p in (project / "remote").rglob("*") if p.is_file()) == 3  # 2 files, 1 dir


def test_a_failed_background_commit_fails_the_run_before_the_push(project):
    (project / "second.txt").unlink()  # the commit of `second` fails: its output is missing
    bg = versioning.Background(project)
    try:
        bg.commit("first")
        bg.commit("second")
        bg.push()
        with pytest.raises(Exception, match="second.txt"):
            bg.wait()
    finally:
        bg.close()
    assert not (project / "remote").exists()  # the remote changed only if all succeeded
    assert "second" not in (project / "dvc.lock").read_text()


def test_a_symlink_cache_commits_in_line(project):
    """A symlink cache swaps each output file for a link as it commits: not beside a stage."""
    from dvc.repo import Repo

    with Repo(str(project)) as repo, repo.config.edit("local") as conf:
        conf["cache"]["type"] = "symlink"
    bg = versioning.Background(project)
    try:
        assert bg.in_line
        bg.commit("first")
        assert bg._pending is None and (project / "first").is_symlink() is False
        assert (project / "first" / "a.bin").is_symlink()  # done before commit returned
    finally:
        bg.close()
