"""A corrupted DVC cache object is detected before its stage is skipped
(tasks/core/versioning.py ``corrupted_outputs``): the issue's case, where ``dvc checkout``
restored a damaged checkpoint and DVC and ``tlp run`` both said "up to date". A real git +
DVC repository with one small stage that writes a checkpoint folder."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tasks.core import versioning

pytestmark = pytest.mark.integration

STAGE = """\
stages:
  pretrain:
    cmd: python -c "import os; os.makedirs('models/source', exist_ok=True);
      open('models/source/model.safetensors', 'wb').write(bytes(range(256)) * 64);
      open('models/source/meta.json', 'w').write('{}')"
    outs:
      - models/source
"""


def _run(cwd: Path, *args: str) -> None:
    subprocess.run(args, cwd=cwd, check=True, capture_output=True)


@pytest.fixture
def built(tmp_path) -> Path:
    project = tmp_path / "p"
    project.mkdir()
    (project / "dvc.yaml").write_text(STAGE)
    _run(project, "git", "init", "-q")
    _run(project, sys.executable, "-m", "dvc", "init", "-q")
    _run(project, sys.executable, "-m", "dvc", "repro", "-q")
    return project


def _corrupt_cache_and_checkout(project: Path) -> Path:
    """Flip bytes of the checkpoint's cache object in place, then restore the workspace from
    it (the issue's sequence)."""
    weights = project / "models/source/model.safetensors"
    [(_, md5)] = [(rel, h) for rel, h in _listing(project) if rel.endswith("model.safetensors")]
    obj = project / ".dvc/cache/files/md5" / md5[:2] / md5[2:]
    before = obj.stat()
    obj.chmod(0o644)
    data = bytearray(obj.read_bytes())
    data[100:110] = b"\xff" * 10
    obj.write_bytes(bytes(data))
    # bit rot leaves size and times as they were: DVC's state database then vouches for
    # the object (an edit with a new mtime DVC rehashes, finds bad and drops itself)
    os.utime(obj, ns=(before.st_atime_ns, before.st_mtime_ns))
    obj.chmod(0o444)
    weights.unlink()
    _run(project, sys.executable, "-m", "dvc", "checkout", "-q")
    assert weights.read_bytes() == bytes(data)  # the damaged object is what came back
    return obj


def _listing(project: Path) -> list[tuple[str, str]]:
    with versioning.open_repo(project) as repo:
        (out,) = [o for s in repo.index.stages for o in s.outs]
        return versioning._recorded_files(out)


def test_a_corrupted_cache_object_is_found_removed_and_rebuilt(built):
    from tasks.core import uptodate

    assert versioning.corrupted_outputs(built) == [] and uptodate._corrupted(built) == ""
    obj = _corrupt_cache_and_checkout(built)
    assert versioning.is_up_to_date(built, "pretrain")  # DVC trusts its state: the bug
    assert versioning.corrupted_outputs(built, under=("reports/",)) == []  # only what is asked
    # the shortcut of `tlp run` no longer says "up to date": the flow runs
    assert uptodate._corrupted(built) == (
        "models/source/model.safetensors does not match its hash in dvc.lock (corrupted)"
    )
    corrupted = versioning.corrupted_outputs(built, "pretrain")
    assert [c.path for c in corrupted] == ["models/source/model.safetensors"]
    assert (
        corrupted[0]
        .line()
        .startswith("pretrain: models/source/model.safetensors does not match its hash in dvc.lock")
    )
    # the flow's step before a skip: remove the bad file and object, so the stage reruns
    versioning.discard_corrupted(built, corrupted)
    assert not obj.exists() and not (built / "models/source/model.safetensors").exists()
    assert not versioning.is_up_to_date(built, "pretrain")
    _run(built, sys.executable, "-m", "dvc", "repro", "-q")
    assert versioning.corrupted_outputs(built, "pretrain") == []
    assert obj.read_bytes() == bytes(range(256)) * 64  # a good object in the cache again
