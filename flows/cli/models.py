"""Registered-model commands: move @champion (through the gate, or back), and print where a
model came from. Each points MLflow at the project's store first (``open_registry``)."""

from __future__ import annotations

from pathlib import Path
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
        check_task(params, project, name)
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
        check_task(params, project, name)
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


def audit(
    *,
    model: str | None = None,
    as_json: Annotated[bool, Parameter(name="--json")] = False,
    options: ParamsOptions = DEFAULT_PARAMS,
    project: Project,
) -> int:
    """Find alias moves made outside tlp (the MLflow UI) and cut-short registrations.

    Each unrecorded move of @challenger, @champion or @previous_champion is recorded as an
    outside-tlp event and flagged on its version. Exits 1 when it found any, 0 when the
    aliases agree with the audit trail.

    Parameters
    ----------
    model
        registered model (default registry.model_name)
    as_json
        print the findings as JSON
    """
    import json

    from tasks.registry.reconcile import reconcile

    project, params = open_registry(project, options)
    name = model or params.registry.model_name
    managed = (
        params.registry.challenger_alias,
        params.registry.champion_alias,
        params.promote.previous_alias,
    )
    found = [f.as_dict() for f in reconcile(project, name, managed)]
    if as_json:
        print(json.dumps({"model": name, "findings": found}, indent=2))
    else:
        for finding in found:
            print(finding["message"])
        if not found:
            print(f"{name}: aliases agree with the audit trail")
    return 1 if found else 0


def check_task(params, project, name: str) -> None:
    """A model of another task than params' target is refused before any move (only for
    the model params name: another model is checked by the gate, version against version)."""
    if name == params.registry.model_name:
        from tasks.stages.preflight import check_task as check

        check(params, project, name)


def serve_model(
    model_uri: Annotated[str | None, Parameter(name="MODEL_URI")] = None,
    /,
    *,
    host: str = "127.0.0.1",
    port: int = 5001,
    max_request_mb: float = 32.0,
    allow_paths_under: Path | None = None,
    options: ParamsOptions = DEFAULT_PARAMS,
    project: Project,
) -> int:
    """Serve a registered model over REST (MLflow's scoring protocol) on 127.0.0.1.

    Bodies over the size limit get 413; bad requests get 400 with one short message (no
    stack trace, no server path); the images are checked by the model (shapes, dtypes,
    NaN, pixels, images per request). File paths are refused unless --allow-paths-under.

    Parameters
    ----------
    model_uri
        models:/NAME@ALIAS, models:/NAME/VERSION, runs:/... (default:
        models:/<registry.model_name>@<registry.champion_alias>)
    host
        address to bind (default: 127.0.0.1; anything else exposes the model)
    port
        port (default: 5001)
    max_request_mb
        largest request body in MiB (default: 32)
    allow_paths_under
        also accept paths of image files under this folder (default: no paths)
    """
    import mlflow.pyfunc
    from mlflow.exceptions import MlflowException

    from tasks.registry.model_inputs import allowed_root
    from tasks.registry.rest import run
    from tasks.stages.preflight import PreflightError

    project, params = open_registry(project, options)
    r = params.registry
    uri = model_uri or f"models:/{r.model_name}@{r.champion_alias}"
    if max_request_mb <= 0:
        raise PreflightError(f"--max-request-mb {max_request_mb}: must be positive")
    config = {}
    if allow_paths_under is not None:
        try:
            root = allowed_root(allow_paths_under, "--allow-paths-under")
        except ValueError as exc:
            raise PreflightError(str(exc)) from None
        config["allow_paths_under"] = str(root)
    try:
        model = mlflow.pyfunc.load_model(uri, model_config=config or None)
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise
        raise PreflightError(f"{uri}: {' '.join(exc.message.split())}") from None
    print(f"Serving {uri} on http://{host}:{port}/invocations (Ctrl-C stops)", flush=True)
    run(model, host, port, int(max_request_mb * 2**20))
    return 0


COMMANDS = {
    "promote": promote,
    "rollback": rollback,
    "lineage": lineage,
    "audit": audit,
    "serve-model": serve_model,
}
