import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from flows.cli import app
from flows.cli.options import ParamsOptions

HEAVY = (
    *("torch", "timm", "prefect", "mlflow", "great_expectations", "dvc"),
    *("pandas", "pydantic", "numpy", "yaml", "tasks"),
)
TLP = str(Path(sys.executable).parent / "tlp")


def tlp(*args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([TLP, *args], capture_output=True, text=True, cwd=cwd, timeout=120)


def test_help_imports_nothing_heavy():
    """``tlp --help`` through the console script's own entry (console(), gc.freeze, exit)."""
    code = (
        "import sys\nfrom flows.cli import console\nsys.argv = ['tlp', '--help']\n"
        "try:\n    console()\nexcept SystemExit as exc:\n    assert exc.code == 0, exc.code\n"
        f"print([m for m in sys.modules if m.split('.')[0] in {HEAVY!r}])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "Registered models" in out.stdout  # the help was printed in that process
    assert out.stdout.strip().splitlines()[-1] == "[]"


def _help_sections(text: str) -> dict[str, list[str]]:
    """Command names under each panel title of the rich help (``╭─ Title ───╮``)."""
    sections: dict[str, list[str]] = {}
    current = None
    for line in text.splitlines():
        title = re.match(r"╭─ (.+?) ─", line)
        if title:
            current = sections.setdefault(title.group(1), [])
        elif current is not None and (row := re.match(r"│ (\S+)\s", line)):
            current.append(row.group(1))
    return sections


def test_help_lists_the_three_command_groups():
    done = tlp("--help")
    assert done.returncode == 0, done.stderr
    sections = _help_sections(done.stdout)
    assert sections["Pipeline"] == [
        *("params", "rank", "reproduce", "run", "serve", "stage", "validate"),
    ]
    assert sections["Registered models"] == [
        *("audit", "lineage", "predict", "promote", "rollback", "serve-model"),
    ]
    assert sections["Operations"] == ["server", "ui"]
    assert {"--project-dir", "--verbose", "--help"} <= set(sections["Global options"])


@pytest.mark.parametrize(
    "args, named",
    [
        (["run", "--bogus"], "--bogus"),
        (["promote", "tlp-uci-digits"], "VERSION"),
        (["rank", "--score", "accuracy"], "accuracy"),
        (["train"], "train"),
    ],
)
def test_usage_error_exits_2_with_one_line(args, named):
    done = tlp(*args)
    assert done.returncode == 2
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("tlp: usage error: ") and named in lines[0]
    assert done.stdout == ""


def test_no_command_is_a_usage_error():
    done = tlp()
    assert done.returncode == 2 and "Pipeline" in done.stderr


# every command that reads params, with its required arguments
PARAMS_COMMANDS = {
    "run": [],
    "params": [],
    "validate": [],
    "rank": ["models/source"],
    "reproduce": ["tlp-uci-digits@champion"],
    "serve": [],
    "promote": ["tlp-uci-digits", "3", "--reason", "why"],
    "rollback": ["tlp-uci-digits"],
    "lineage": ["tlp-uci-digits@champion"],
    "audit": [],
    "predict": ["images/"],
    "serve-model": [],
    "ui": [],
    "server": [],
}


@pytest.mark.parametrize("command", sorted(PARAMS_COMMANDS))
def test_profile_and_set_parse_the_same_in_every_command(command):
    """One ParamsOptions definition: --profile once, --set repeatable and kept in order,
    both forms (``--set X`` and ``--set=X``), anywhere among the command's own options."""
    tokens = [command, "--set", "base.seed=7", *PARAMS_COMMANDS[command]]
    tokens += ["--profile", "smoke", "--set=transfer.epochs=2"]
    _, bound, ignored = app.parse_args(tokens)
    assert bound.arguments["options"] == ParamsOptions(
        "smoke", ("base.seed=7", "transfer.epochs=2")
    )
    assert "project" in ignored  # the global -C reaches every command
    _, bound, _ = app.parse_args([command, *PARAMS_COMMANDS[command]])
    assert bound.arguments.get("options", ParamsOptions()) == ParamsOptions("default", ())


def test_the_commands_that_read_params_are_the_ones_listed():
    """``stage`` reads params.resolved.yaml, as dvc.yaml's commands need: no --set there."""
    with pytest.raises(Exception, match="--set"):
        app.parse_args(["stage", "prepare", "--set", "base.seed=1"])
    assert set(app) - {"--help", "-h", "--version"} == {*PARAMS_COMMANDS, "stage"}


def test_profile_and_set_reach_the_params(tmp_path, project_root):
    (tmp_path / "params.yaml").write_text((project_root / "params.yaml").read_text())
    done = tlp("-C", str(tmp_path), "params", "--profile", "smoke", "--set", "base.seed=7")
    assert done.returncode == 0, done.stderr
    assert "\n  seed: 7\n" in done.stdout
    smoke = tlp("-C", str(tmp_path), "params", "--profile", "smoke").stdout
    default = tlp("params", "-C", str(tmp_path)).stdout  # -C after the command works too
    assert smoke != default and "\n  seed: 7\n" not in smoke


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


def test_a_missing_project_folder_is_not_created(tmp_path):
    """The traceback goes to the project's log only when there is a project to write in."""
    missing = tmp_path / "typo"
    done = tlp("-C", str(missing), "stage", "train")
    assert done.returncode == 1 and not missing.exists()
    assert done.stderr.splitlines() == [
        "tlp: stage failed: KeyError: \"unknown stage 'train' (stages: prepare, validate, "
        'pretrain, transfer, evaluate, register)" (rerun with --verbose for the traceback)'
    ]


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


HOLD = """
import sys, time
from pathlib import Path
from tasks.core.locking import run_lock
with run_lock(Path(sys.argv[1]), what="holder"):
    print("held", flush=True)
    time.sleep(60)
"""


@pytest.fixture
def held_project(tmp_path, project_root):
    """A project whose run lock another process holds."""
    (tmp_path / "params.yaml").write_text((project_root / "params.yaml").read_text())
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(tmp_path)], stdout=subprocess.PIPE, text=True
    )
    assert holder.stdout.readline().strip() == "held"
    yield tmp_path
    holder.kill()
    holder.wait()


def test_a_held_run_lock_exits_3(held_project):
    done = tlp("-C", str(held_project), "run")
    assert done.returncode == 3
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("tlp: run stopped: ") and "--wait" in lines[0]


def test_an_interrupted_command_exits_130(held_project):
    """Ctrl-C while ``tlp run --wait`` queues behind another run."""
    import signal

    proc = subprocess.Popen(
        [TLP, "-C", str(held_project), "run", "--wait", "60"],
        stderr=subprocess.PIPE,
        text=True,
        # SIGINT as a terminal leaves it: a test runner started in the background (a shell
        # without job control) ignores SIGINT, and its children inherit that
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),  # noqa: PLW1509
    )
    queued = proc.stderr.readline()  # past start-up and params, queued on the lock
    assert "waiting up to 60 s for the run lock (pid " in queued, queued
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and err.strip().splitlines() == ["tlp: interrupted"], err


def test_verbose_is_exported_for_the_code_the_command_runs(tmp_path, monkeypatch, capsys):
    from flows.cli import main

    monkeypatch.delenv("TLP_VERBOSE", raising=False)
    assert main(["-C", str(tmp_path), "stage", "train"]) == 1
    assert "TLP_VERBOSE" not in os.environ and "Traceback" not in capsys.readouterr().err
    assert main(["-C", str(tmp_path), "--verbose", "stage", "train"]) == 1
    assert os.environ["TLP_VERBOSE"] == "1"
    err = capsys.readouterr().err
    assert "Traceback (most recent call last):" in err and "(traceback:" not in err


def test_tlp_debug_reraises_after_the_line(tmp_path, monkeypatch, capsys):
    from flows.cli import main

    monkeypatch.setenv("TLP_DEBUG", "1")
    with pytest.raises(KeyError, match="unknown stage 'train'"):
        main(["-C", str(tmp_path), "stage", "train"])
    assert capsys.readouterr().err.startswith("tlp: stage failed: KeyError")
