"""Registered-model commands: move @champion (through the gate, or back), and print where a
model came from. Each points MLflow at the project's store first (``open_registry``)."""

from __future__ import annotations

from typing import Annotated

from cyclopts import Parameter

from flows.cli.options import (
    DEFAULT_PARAMS,
    ModelName,
    ModelRef,
    ParamsOptions,
    Project,
    Wait,
    open_registry,
    project_lock,
)


def promote(
    name: ModelName,
    version: str,
    /,
    *,
    reason: str,
    force: bool = False,
    options: ParamsOptions = DEFAULT_PARAMS,
    wait: Wait = 0.0,
    project: Project,
) -> int:
    """Move @champion to a version if the gate passes (--force overrides).

    Parameters
    ----------
    version
        model version to promote
    reason
        why (recorded with the move)
    force
        promote even if the gate refuses (recorded)
    """
    from flows.promote import gate_and_promote

    with project_lock(project, wait, f"promote {name} {version}"):  # a run's gate moves it too
        project, params = open_registry(project, options)
        outcome = gate_and_promote(project, params, name, version, reason, force, manual=True)
    if outcome["promoted"]:
        how = "FORCED past the gate" if outcome["forced"] else "gate passed"
        print(f"{name} version {version} is now @champion ({how}): {outcome['reason']}")
    else:
        print(outcome["reason"])
    return 0


def rollback(
    name: ModelName,
    /,
    *,
    reason: str = "rollback",
    options: ParamsOptions = DEFAULT_PARAMS,
    wait: Wait = 0.0,
    project: Project,
) -> int:
    """Move @champion back to @previous_champion.

    Parameters
    ----------
    reason
        why (recorded with the move; default: rollback)
    """
    from tasks.registry.aliases import rollback_champion

    with project_lock(project, wait, f"rollback {name}"):
        project, params = open_registry(project, options)
        event = rollback_champion(
            project,
            name,
            reason,
            params.registry.champion_alias,
            params.promote.previous_alias,
            params.promote.retries,
            params.promote.retry_delay,
        )
    print(f"{name}: @champion rolled back from {event.from_version} to {event.to_version}")
    return 0


def lineage(
    ref: ModelRef,
    /,
    *,
    as_json: Annotated[bool, Parameter(name="--json")] = False,
    options: ParamsOptions = DEFAULT_PARAMS,
    project: Project,
) -> int:
    """Git commit, params, DVC hashes, MLflow and Prefect runs of a model.

    Exits 1 when any of them is missing.

    Parameters
    ----------
    as_json
        print JSON
    """
    import json
    import tempfile
    from pathlib import Path

    from tasks.registry.lineage import format_lineage
    from tasks.registry.lineage import lineage as read_lineage

    open_registry(project, options)
    with tempfile.TemporaryDirectory() as tmp:
        info = read_lineage(ref, Path(tmp))
        info.pop("files")
    print(json.dumps(info, indent=2) if as_json else format_lineage(info))
    return 0 if info["complete"] else 1


COMMANDS = {"promote": promote, "rollback": rollback, "lineage": lineage}
