import subprocess
import sys

HEAVY = ("torch", "timm", "prefect", "mlflow", "great_expectations", "dvc")


def test_help_imports_nothing_heavy():
    code = (
        "import sys\nfrom flows import cli\n"
        "try:\n    cli.main(['--help'])\nexcept SystemExit:\n    pass\n"
        f"print([m for m in {HEAVY!r} if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_bad_params_fail_before_any_work(tmp_path, project_root):
    (tmp_path / "params.yaml").write_text((project_root / "params.yaml").read_text())
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "flows.cli",
            "-C",
            str(tmp_path),
            "run",
            "--set",
            "pretrain.epochs=-1",
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    assert "pretrain.epochs" in result.stderr and "greater than or equal to 1" in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml"]  # nothing was created


def test_unknown_stage_is_named(tmp_path, project_root):
    (tmp_path / "params.yaml").write_text((project_root / "params.yaml").read_text())
    result = subprocess.run(
        [sys.executable, "-m", "flows.cli", "-C", str(tmp_path), "stage", "train"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 1 and "unknown stage 'train'" in result.stderr


def test_failing_stage_is_named(tmp_path, project_root):
    (tmp_path / "params.yaml").write_text((project_root / "params.yaml").read_text())
    result = subprocess.run(
        [sys.executable, "-m", "flows.cli", "-C", str(tmp_path), "stage", "validate"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 1
    assert "stage 'validate' failed: DataError" in result.stderr
    assert "manifest not found (run the prepare stage first)" in result.stderr


def test_the_command_still_runs_exit_handlers(tmp_path, project_root):
    """``tlp`` skips the interpreter's final garbage collections, not its exit handlers:
    Prefect's workers drain and the temporary API server stops in them."""
    (tmp_path / "params.yaml").write_text((project_root / "params.yaml").read_text())
    marker = tmp_path / "handler-ran"
    code = (
        "import atexit, sys\n"
        f"atexit.register(lambda: open({str(marker)!r}, 'w').close())\n"
        "from flows.cli import console\n"
        f"sys.argv = ['tlp', '-C', {str(tmp_path)!r}, 'stage', 'train']\n"
        "console()\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 1 and "unknown stage 'train'" in result.stderr
    assert marker.is_file()
