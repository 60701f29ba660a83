"""The console ``tlp`` sets up: our lines, other libraries' warnings, no Prefect failure
records and no tracebacks unless TLP_VERBOSE=1; a per-epoch line left to the bar on a
terminal only."""

from __future__ import annotations

import logging

import pytest

from tasks.core import logs


@pytest.fixture
def console(capsys):
    """configure_logging in this process, undone afterwards (handlers and levels)."""
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    levels = {n: logging.getLogger(n).level for n in (*logs.PROJECT_LOGGERS, "httpx")}

    def configure(verbose: bool) -> None:
        logs.configure_logging(verbose=verbose)
        capsys.readouterr()

    yield configure
    root.handlers[:] = saved[0]
    root.setLevel(saved[1])
    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)


def _failure() -> None:
    try:
        raise RuntimeError("stage 'prepare' failed: too few images")
    except RuntimeError:
        logging.getLogger("prefect.task_runs").exception("Task run failed with exception")
        logging.getLogger("great_expectations.x").warning("odd file", exc_info=True)


def test_quiet_console_shows_our_lines_and_warnings_only(console, capsys):
    console(verbose=False)
    logging.getLogger("tasks.stages").info("prepare: started")
    logging.getLogger("great_expectations.data_context").info("Created temporary directory")
    logging.getLogger("tasks.modeling.training").info(
        "pretrain: epoch 1/2", extra={logs.PROGRESS: True}
    )
    _failure()
    err = capsys.readouterr().err
    assert "prepare: started" in err
    assert "pretrain: epoch 1/2" in err  # captured stderr is not a terminal: no bar, a line
    assert "Created temporary directory" not in err
    assert "Task run failed" not in err  # the CLI's one line reports the failure
    assert "warning: odd file (great_expectations.x)" in err
    assert "Traceback" not in err


def test_verbose_console_shows_failures_with_their_traceback(console, capsys):
    console(verbose=True)
    # a library logger no earlier test has configured (Prefect's and GX's set-up in the same
    # session may have set levels or disabled theirs): another library's INFO line
    logging.getLogger("tlp_test_library.loader").info("Created temporary directory")
    _failure()
    err = capsys.readouterr().err
    assert "Created temporary directory" in err
    assert "Task run failed with exception" in err
    assert "Traceback (most recent call last)" in err


def test_configuring_twice_prints_each_line_once(console, capsys):
    console(verbose=False)
    console(verbose=False)
    logging.getLogger("tasks.stages").info("evaluate: started")
    assert capsys.readouterr().err.count("evaluate: started") == 1
