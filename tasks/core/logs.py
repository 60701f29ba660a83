"""Logging: module loggers under ``tasks`` and ``flows``, one console set-up for the CLI.

Every module logs through ``logging.getLogger(__name__)``; nothing here runs at import time.
``configure_logging`` (called once by the ``tlp`` command) decides what the terminal shows:
our own short lines (each stage's start and summary, and per epoch the loss and val accuracy
when stderr is not a terminal; a tqdm bar stands in for those when it is), other libraries'
warnings, and nothing else. A failure is the CLI's one line: Prefect's failure records and
every traceback stay off the console (the flow-run page and the log file keep them) unless
``TLP_VERBOSE=1``. Inside a Prefect run, ``forward_to_prefect`` sends the same records to
the run's log, so the flow-run page shows the progress; without Prefect (``tlp stage``,
``dvc repro``) nothing of Prefect is imported.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

PROJECT_LOGGERS = ("tasks", "flows")
VERBOSE_ENV = "TLP_VERBOSE"
# Prefect's run-state narration; its ERROR records are the failure the CLI reports in one line
_PREFECT_RUN_LOGGERS = ("prefect.flow_runs", "prefect.task_runs")
_TIME = "%H:%M:%S"
# a record logged with extra={PROGRESS: True} (one per epoch) is left to the tqdm bar when the
# console is a terminal; it still goes to the Prefect run and the log file
PROGRESS = "tlp_progress"


def is_verbose() -> bool:
    return os.environ.get(VERBOSE_ENV, "").strip().lower() not in ("", "0", "false", "no")


def _ours(record: logging.LogRecord) -> bool:
    return record.name.split(".", 1)[0] in PROJECT_LOGGERS


class ConsoleHandler(logging.StreamHandler):
    """A stream handler on whatever ``sys.stderr`` is at the time of each record (pytest's
    capture, a redirect), like logging's own last-resort handler. Its name has no leading
    underscore: Prefect leaves a root logger alone when it holds such a handler."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:  # StreamHandler.__init__ assigns it
        pass


class _ConsoleFilter(logging.Filter):
    """Our lines (INFO and up), other libraries' warnings; never Prefect's failure records."""

    def __init__(self, verbose: bool) -> None:
        super().__init__()
        self.verbose = verbose

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, PROGRESS, False) and sys.stderr.isatty():
            return False  # the tqdm bar shows the epochs
        if self.verbose or _ours(record):
            return True
        if record.name.startswith(_PREFECT_RUN_LOGGERS) and record.levelno >= logging.ERROR:
            return False
        return record.levelno >= logging.WARNING


class _ConciseFormatter(logging.Formatter):
    """``HH:MM:SS message`` for our lines, ``HH:MM:SS warning: message (logger)`` for the
    rest; no traceback (it is in the log file, or shown with TLP_VERBOSE=1)."""

    def __init__(self) -> None:
        super().__init__(datefmt=_TIME)

    def format(self, record: logging.LogRecord) -> str:
        when = self.formatTime(record, self.datefmt)
        message = record.getMessage()
        if _ours(record) and record.levelno < logging.WARNING:
            return f"{when} {message}"
        return f"{when} {record.levelname.lower()}: {message} ({record.name})"


def _remove_console(logger: logging.Logger) -> None:
    """Drop an earlier console handler of ours or Prefect's (a second call, or Prefect
    imported first): one handler prints each line."""
    for handler in list(logger.handlers):
        if isinstance(handler, ConsoleHandler) or type(handler).__name__ == "PrefectConsoleHandler":
            logger.removeHandler(handler)


def configure_logging(verbose: bool | None = None, log_file: Path | None = None) -> None:
    """The console (and, when given, a log file with every record and traceback) for one
    ``tlp`` command. Call it before Prefect is imported: Prefect then leaves the root logger
    to us (it only adds its console handler to a root logger without handlers)."""
    verbose = is_verbose() if verbose is None else verbose
    # MLflow prints through a handler of its own: its level is its environment variable
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "INFO" if verbose else "WARNING")
    root = logging.getLogger()
    _remove_console(root)
    console = ConsoleHandler()
    console.addFilter(_ConsoleFilter(verbose))
    if verbose:
        console.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    else:
        console.setFormatter(_ConciseFormatter())
    root.addHandler(console)
    if log_file is not None:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        for handler in [h for h in root.handlers if getattr(h, "tlp_log_file", False)]:
            root.removeHandler(handler)
            handler.close()
        file = logging.FileHandler(log_file, encoding="utf-8")
        file.tlp_log_file = True
        file.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        root.addHandler(file)
    if verbose:
        root.setLevel(logging.INFO)
        if logging.getLogger("httpx").level == logging.NOTSET:  # a line per Prefect API call
            logging.getLogger("httpx").setLevel(logging.WARNING)
    for name in PROJECT_LOGGERS:
        logging.getLogger(name).setLevel(logging.INFO)


def forward_to_prefect() -> None:
    """Send our records, when logged inside a Prefect flow or task run, to that run's log
    (the flow-run page). Prefect's own API handler does the sending; this is what the setting
    ``PREFECT_LOGGING_EXTRA_LOGGERS=tasks,flows`` does, but that setting must be in the
    environment before Prefect is imported, which a worker or a test session does not
    guarantee. A record outside any run is not sent (no 'missing flow run' warning), so one
    call per flow is enough and repeated calls change nothing."""
    from prefect.context import FlowRunContext, TaskRunContext
    from prefect.logging.handlers import APILogHandler

    def in_a_run(record: logging.LogRecord) -> bool:
        return FlowRunContext.get() is not None or TaskRunContext.get() is not None

    for name in PROJECT_LOGGERS:
        logger = logging.getLogger(name)
        if any(isinstance(h, APILogHandler) for h in logger.handlers):
            continue
        handler = APILogHandler()
        handler.addFilter(in_a_run)
        logger.addHandler(handler)
        if logger.level == logging.NOTSET:  # not configured by the CLI: the run still logs
            logger.setLevel(logging.INFO)
