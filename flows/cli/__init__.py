"""``tlp``, the command line, on cyclopts.

Commands live in a module per help group: ``pipeline``, ``models`` (registered models, with
``predict`` in a module of its own) and ``operations``. The options they share are defined
once in ``options``. A meta app takes the global ``-C/--project-dir`` and ``-v/--verbose``
and runs the chosen command through ``errors.run_command``, which maps failures to exit
codes. Heavy libraries load inside commands, so ``tlp --help`` imports only cyclopts (and
rich, which it draws with).
"""

from __future__ import annotations

import gc
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated

from cyclopts import App, Parameter
from cyclopts.exceptions import CycloptsError

from flows.cli import models, operations, pipeline, predict
from flows.cli.errors import interrupted, run_command
from flows.cli.options import GLOBAL, MODELS, OPERATIONS, PIPELINE, ProjectDir, Verbose

__all__ = ["app", "console", "main"]

# No network here and nothing to phone home to: set before Prefect, MLflow or GX is imported.
_QUIET_ENV = {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "DO_NOT_TRACK": "1",
    "GX_ANALYTICS_ENABLED": "false",
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
    "GIT_PYTHON_REFRESH": "quiet",
}


def _version() -> str:
    from importlib.metadata import version

    return version("tlp")


app = App(
    name="tlp",
    help="Orchestrated transfer-learning pipeline (Prefect, timm, GX, MLflow, DVC).",
    help_format="plaintext",  # no markdown parser on the --help path
    version=_version,
    group_commands=GLOBAL,  # where --help and --version are listed
    # flags as argparse had them (no --no-X twins); defaults worth knowing are in the help text
    default_parameter=Parameter(negative=(), show_default=False),
    result_action="return_value",  # main() turns it into the exit code
    exit_on_error=False,  # usage errors reach main(): one line, exit 2
    print_error=False,
    verbose=False,  # cyclopts' developer detail (source file, tokens) stays out of that line
    suppress_keyboard_interrupt=False,
)
for _module, _group in (
    (pipeline, PIPELINE),
    (models, MODELS),
    (predict, MODELS),
    (operations, OPERATIONS),
):
    for _name, _command in _module.COMMANDS.items():
        app.command(_command, name=_name, group=_group)


@app.meta.default
def _launch(
    *tokens: Annotated[str, Parameter(show=False, allow_leading_hyphen=True)],
    project_dir: ProjectDir = Path("."),
    verbose: Verbose = False,
) -> int:
    """Parse the command, then run it with the project folder the global ``-C`` names."""
    if verbose:
        os.environ["TLP_VERBOSE"] = "1"  # for the logging set-up of the code the command runs
    command, bound, ignored = app.parse_args(tokens)
    chain = app.parse_commands(tokens)[0]
    if not chain:  # `tlp` alone (argparse's "a command is required")
        from rich.console import Console

        app.help_print([], console=Console(stderr=True))
        return 2
    from tasks.core.logs import configure_logging

    configure_logging(verbose)  # once, before the command imports Prefect
    extra = {"project": project_dir} if "project" in ignored else {}
    return run_command(
        chain[0],
        lambda: command(*bound.args, **bound.kwargs, **extra),
        project_dir,
        verbose,
        tokens,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``tlp`` with ``argv`` (default: the process's arguments); return the exit code."""
    for key, value in _QUIET_ENV.items():
        os.environ.setdefault(key, value)
    tokens = list(sys.argv[1:] if argv is None else argv)
    try:
        code = app.meta(tokens)
    except CycloptsError as exc:
        message = " ".join(str(exc).split())
        helps = " ".join(["tlp", *(exc.command_chain or ())[:1], "--help"])
        print(f"tlp: usage error: {message} ({helps} lists the options)", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:  # before or after the command ran
        return interrupted(exc)
    return 0 if code is None else int(code)


def console() -> None:
    """The ``tlp`` command. Its objects are frozen out of the garbage collector before the
    interpreter exits: the final collections over torch's, timm's and Great Expectations'
    objects took 2-3 s after every ``tlp run``, for memory the OS takes back anyway. Exit
    handlers (Prefect's log and event workers, the temporary API's stop) still run."""
    code = main()
    gc.freeze()
    sys.exit(code)
