"""A full disk is named as such (flows/cli/errors.py ``disk_full``): whichever writer hit it,
the command ends with one line, "no space left on device writing PATH (FREE free on MOUNT)",
not torch's "unexpected pos 5056576 vs 5056468". Unit level: making a real full filesystem
needs root (a loop mount or a sized tmpfs), so the errors are the writers' own, raised here."""

from __future__ import annotations

import errno
import os
import re
from pathlib import Path

import pytest

from flows.cli import errors
from tasks.stages import StageFailed

LINE = re.compile(r"no space left on device writing (?P<path>\S+) \((?P<free>[\d.]+ \w+) free on /")


def _ended(tmp_path, raised: BaseException, capsys) -> tuple[int, str]:
    def call():
        raise raised

    code = errors.run_command("run", call, tmp_path, False, ["run"])
    return code, capsys.readouterr().err.strip()


def _wrapped(exc: Exception) -> StageFailed:
    """As a stage reports it: StageFailed from the writer's error."""
    try:
        raise StageFailed(f"stage 'pretrain' failed: {type(exc).__name__}: {exc}") from exc
    except StageFailed as failed:
        return failed


def test_enospc_names_its_file_and_the_free_space(tmp_path, capsys):
    target = tmp_path / "models" / "source" / "model.safetensors"
    code, err = _ended(
        tmp_path, OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(target)), capsys
    )
    assert code == 1 and "\n" not in err
    assert err.startswith(f"tlp: run failed: no space left on device writing {target} (")
    assert LINE.search(err)


def test_safetensors_io_error_inside_a_stage_is_a_full_disk(tmp_path, capsys):
    rust = (
        'Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "No '
        'space left on device" })'
    )
    code, err = _ended(tmp_path, _wrapped(RuntimeError(rust)), capsys)
    assert code == 1 and LINE.search(err).group("path") == str(tmp_path)


def test_torch_short_write_is_a_full_disk_only_when_space_is_low(tmp_path, capsys, monkeypatch):
    torch_error = RuntimeError(
        "[enforce fail at inline_container.cc:672] . unexpected pos 5056576 vs 5056468"
    )
    _, err = _ended(tmp_path, _wrapped(torch_error), capsys)
    assert "unexpected pos" in err and "no space" not in err  # this disk has room: as it was
    monkeypatch.setattr(errors, "LOW_SPACE", 1 << 62)  # a nearly full disk
    code, err = _ended(tmp_path, _wrapped(torch_error), capsys)
    assert code == 1 and LINE.search(err)


def test_other_errors_are_left_alone(tmp_path, capsys):
    _, err = _ended(tmp_path, OSError(errno.EACCES, "Permission denied", "x"), capsys)
    assert err.startswith("tlp: run failed: PermissionError: [Errno 13] Permission denied")


def test_free_space_is_read_on_the_nearest_existing_parent(tmp_path):
    free, mount = errors._free(tmp_path / "not" / "yet")
    assert free > 0 and Path(mount).is_dir() and os.path.ismount(mount)


@pytest.mark.parametrize(("n", "shown"), [(0, "0 B"), (1536, "1.5 KiB"), (5 << 30, "5.0 GiB")])
def test_sizes_read_like_df(n, shown):
    assert errors._size(n) == shown


def test_a_full_sqlite_store_is_a_full_disk(tmp_path, capsys):
    """Seen on a 3 MB tmpfs: MLflow's SQLite store was the last writer to fail."""
    sqlite = RuntimeError("(sqlite3.OperationalError) database or disk is full")
    code, err = _ended(tmp_path, _wrapped(sqlite), capsys)
    assert code == 1 and LINE.search(err).group("path") == str(tmp_path.resolve())
