"""The ``tlp run`` shortcut says "nothing changed" only when nothing did: params, data, stage
code, dvc.lock and the registry each break it."""

from __future__ import annotations

import os
import sqlite3
import sys
from pathlib import Path

import pytest

from tasks.core import uptodate
from tasks.core.params import resolve_params, write_resolved

LOCK = """schema: '2.0'
stages:
  prepare:
    cmd: tlp stage prepare
    deps:
    - path: tasks/data/datasets.py
      md5: 0
    outs:
    - path: data/source
      md5: 1.dir
"""
SUMMARY = {
    "model_name": "tlp-uci-digits",
    "version": "1",
    "registered_strategy": "full",
    "candidates": {"scratch": {"accuracy": 0.5}, "full": {"accuracy": 0.9}},
    "transfer_gain": {"full": 0.4},
    "prefect_flow_run_id": "abc",
    "prefect_flow_run_name": "clever-fox",
}


def _registry(db: Path, aliases: list[tuple[str, str]]) -> None:
    con = sqlite3.connect(db)
    con.execute("CREATE TABLE IF NOT EXISTS model_versions (name, version, current_stage, status)")
    con.execute("CREATE TABLE IF NOT EXISTS registered_model_aliases (alias, version, name)")
    con.execute("DELETE FROM model_versions")
    con.execute("DELETE FROM registered_model_aliases")
    con.execute("INSERT INTO model_versions VALUES ('tlp-uci-digits', 1, 'None', 'READY')")
    con.executemany("INSERT INTO registered_model_aliases VALUES (?, ?, 'tlp-uci-digits')", aliases)
    con.commit()
    con.close()


@pytest.fixture
def project(tmp_path: Path, project_root: Path):
    for name in ("params.yaml", "dvc.yaml"):
        (tmp_path / name).write_text((project_root / name).read_text())
    (tmp_path / "dvc.lock").write_text(LOCK)
    (tmp_path / "tasks" / "data").mkdir(parents=True)
    (tmp_path / "tasks" / "data" / "datasets.py").write_text("# stage code\n")
    (tmp_path / "data" / "source" / "images").mkdir(parents=True)
    (tmp_path / "data" / "source" / "images" / "0.png").write_bytes(b"png")
    (tmp_path / "dvc-storage").mkdir()
    _registry(tmp_path / "mlflow.db", [("champion", "1")])
    params = resolve_params(tmp_path / "params.yaml")
    write_resolved(params, tmp_path)
    uptodate.record(tmp_path, params, SUMMARY)
    return tmp_path, params


def _changed(project_dir: Path, params) -> bool:
    saved, why = uptodate.check(project_dir, params)
    assert (saved is None) == bool(why)
    return saved is None


def test_nothing_changed_gives_the_recorded_run(project):
    project_dir, params = project
    saved, why = uptodate.check(project_dir, params)
    assert why == "" and saved["summary"]["version"] == "1"
    assert uptodate.aliases(params, project_dir, "1") == ["champion"]


def test_params_change_is_seen(project):
    project_dir, _ = project
    other = resolve_params(project_dir / "params.yaml", overrides=["transfer.epochs=3"])
    assert _changed(project_dir, other)


def test_moving_the_stores_is_no_change(project):
    """The same store and remote under other names: storage settings are not in the key."""
    project_dir, params = project
    (project_dir / "dvc-storage" / "ab").mkdir()
    (project_dir / "dvc-storage" / "ab" / "cdef").write_bytes(b"object")
    uptodate.record(project_dir, params, SUMMARY)
    (project_dir / "stores").mkdir()
    os.rename(project_dir / "mlflow.db", project_dir / "stores" / "mlflow.db")
    os.rename(project_dir / "dvc-storage", project_dir / "stores" / "dvc")
    moved = resolve_params(
        project_dir / "params.yaml",
        overrides=[
            "storage.tracking_uri=sqlite:///stores/mlflow.db",
            "storage.dvc_remote=stores/dvc",
        ],
    )
    assert moved.storage != params.storage
    saved, why = uptodate.check(project_dir, moved)
    assert why == "" and saved["summary"]["version"] == "1"


def test_data_change_is_seen(project):
    project_dir, params = project
    image = project_dir / "data" / "source" / "images" / "0.png"
    image.write_bytes(b"PNG!")  # same size, new contents and time
    assert _changed(project_dir, params)


def test_new_data_file_is_seen(project):
    project_dir, params = project
    (project_dir / "data" / "source" / "images" / "1.png").write_bytes(b"png")
    assert _changed(project_dir, params)


def test_stage_code_change_is_seen(project):
    project_dir, params = project
    code = project_dir / "tasks" / "data" / "datasets.py"
    st = code.stat()
    code.write_text("# stage code\n")  # same bytes; only the time moves
    os.utime(code, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    assert _changed(project_dir, params)


def test_dvc_lock_change_is_seen(project):
    project_dir, params = project
    (project_dir / "dvc.lock").write_text(LOCK.replace("md5: 0", "md5: 2"))
    assert _changed(project_dir, params)


def test_registry_change_is_seen(project):
    project_dir, params = project
    _registry(project_dir / "mlflow.db", [])  # @champion removed (e.g. a rollback)
    assert _changed(project_dir, params)


def test_a_server_store_is_never_taken_for_up_to_date(project):
    project_dir, _ = project
    other = resolve_params(
        project_dir / "params.yaml", overrides=["storage.tracking_uri=http://127.0.0.1:5000"]
    )
    saved, why = uptodate.check(project_dir, other)
    assert saved is None and "not a local SQLite file" in why


def test_no_record_means_run_the_flow(tmp_path, project_root):
    (tmp_path / "params.yaml").write_text((project_root / "params.yaml").read_text())
    params = resolve_params(tmp_path / "params.yaml")
    assert uptodate.check(tmp_path, params) == (None, "no earlier successful run recorded")


def test_shortcut_imports_nothing_heavy(project):
    """The whole point: the decision is made before torch, Prefect or MLflow load."""
    import subprocess

    project_dir, _ = project
    code = (
        "import sys\nfrom pathlib import Path\nfrom tasks.core import uptodate\n"
        "from tasks.core.params import resolve_params\n"
        f"p = Path({str(project_dir)!r})\n"
        "assert uptodate.check(p, resolve_params(p / 'params.yaml'))[0] is not None\n"
        "heavy = ('torch', 'timm', 'prefect', 'mlflow', 'great_expectations', 'dvc')\n"
        "print([m for m in heavy if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_tlp_run_prints_the_earlier_result(project):
    import subprocess

    project_dir, _ = project
    argv = [sys.executable, "-m", "flows.cli", "-C", str(project_dir), "run"]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "Nothing changed: data and pipelines are up to date." in out.stdout
    assert "tlp-uci-digits version 1 (@champion)" in out.stdout
    assert "clever-fox (abc)" in out.stdout
    assert "skipped (up to date): prepare, validate, pretrain, transfer, evaluate, register" in (
        out.stdout
    )


def test_the_file_behind_a_checkpoint_source_is_seen(project):
    """The params hold only the checkpoint's name: a new file under it must rerun the flow."""
    project_dir, _ = project
    (project_dir / "w.safetensors").write_bytes(b"weights")
    params = resolve_params(
        project_dir / "params.yaml", overrides=["pretrain.checkpoint=w.safetensors"]
    )
    write_resolved(params, project_dir)
    uptodate.record(project_dir, params, SUMMARY)
    assert not _changed(project_dir, params)
    (project_dir / "w.safetensors").write_bytes(b"other weights")
    assert _changed(project_dir, params)
