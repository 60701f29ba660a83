"""Options shared by several commands, each defined once.

``--profile``/``--set`` choose the params every command runs with: one dataclass, flattened
into each command that takes it (``Parameter(name="*")``), so the nine commands that read
params cannot drift apart. ``-C`` and ``-v`` are global: the meta app in ``flows.cli``
parses them wherever they appear and hands the project folder to the command as ``project``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

from cyclopts import Group, Parameter

PIPELINE = Group("Pipeline", sort_key=0)
MODELS = Group("Registered models", sort_key=1)
OPERATIONS = Group("Operations", sort_key=2)
GLOBAL = Group("Global options", sort_key=3)

ProjectDir = Annotated[
    Path,
    Parameter(
        name=["--project-dir", "-C"],
        group=GLOBAL,
        help="project root (default: current dir)",
    ),
]
Verbose = Annotated[
    bool,
    Parameter(
        name=["--verbose", "-v"],
        group=GLOBAL,
        help="print the traceback of a failure (otherwise it goes to .tlp/logs/tlp.log)",
    ),
]
# What a command declares to receive the folder named by -C; not an option of its own.
Project = Annotated[Path, Parameter(parse=False)]
# How long a writing command queues behind another that holds the project's lock.
Wait = Annotated[
    float,
    Parameter(
        name="--wait",
        metavar="SECONDS",
        help="if another tlp command holds this project's lock, wait up to SECONDS for it "
        "(default: stop at once, exit 3)",
    ),
]
# The registered model a command acts on, by name or by reference.
ModelName = Annotated[str, Parameter(name="NAME", help="registered model name")]
ModelRef = Annotated[str, Parameter(name="NAME@ALIAS", help="NAME@ALIAS or NAME/VERSION")]


@Parameter(name="*")
@dataclass(frozen=True)
class ParamsOptions:
    """Which params a command runs with: params.yaml, a profile of it, a preset, then
    overrides."""

    profile: Annotated[
        str, Parameter(help="params profile: default, smoke, ... (default: default)")
    ] = "default"
    overrides: Annotated[
        tuple[str, ...],
        Parameter(
            name="--set",
            metavar="SECTION.KEY=VALUE",
            help="override one params value (repeatable); the value is parsed as YAML",
        ),
    ] = ()
    preset: Annotated[
        str | None,
        Parameter(
            help="strategies and search budget from params.yaml presets: quick (few cheap "
            "candidates, no search) or best (more candidates, each searched)"
        ),
    ] = None

    def resolve(self, project: Path):
        """Validated params; a bad value raises ``ParamsError`` before any work starts."""
        from tasks.core.params import PARAMS_FILE, resolve_params

        return resolve_params(
            project / PARAMS_FILE, self.profile, list(self.overrides), self.preset
        )


DEFAULT_PARAMS = ParamsOptions()  # params.yaml's default profile, nothing overridden


def project_lock(project: Path, wait: float, command: str):
    """The project's run lock (tasks/core/locking.py) for a command that writes project
    state; the holder is described as ``tlp COMMAND`` to whoever comes second."""
    from tasks.core.locking import run_lock

    return run_lock(project.resolve(), wait=wait, what=f"tlp {command}")


def open_registry(project: Path, options: ParamsOptions):
    """The resolved params and the absolute project folder, with MLflow pointed at its store."""
    from tasks.core import tracking

    params = options.resolve(project)
    project = project.resolve()
    tracking.configure(params.storage.tracking_uri, project, params.base.experiment)
    return project, params
