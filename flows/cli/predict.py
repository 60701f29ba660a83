"""``tlp predict``: batch scoring with a registered model (tasks/registry/prediction.py).

Listed with the registered-model commands. Every argument is checked before an image is
read or a model loaded (a missing path, an unknown model or alias, a runtime the version
does not have, a bad ``--out``): one line, exit 2.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Literal

from cyclopts import Parameter
from cyclopts.validators import Number

from flows.cli.options import DEFAULT_PARAMS, ParamsOptions, Project, open_registry


def predict(
    *inputs: Annotated[str, Parameter(name="INPUT")],
    model: Annotated[str | None, Parameter(name="--model", metavar="MODEL")] = None,
    out: Path = Path("predictions.parquet"),
    runtime: Literal["onnx", "pyfunc"] | None = None,
    batch_size: Annotated[int, Parameter(validator=Number(gte=1, lte=65536))] = 64,
    strict: bool = False,
    options: ParamsOptions = DEFAULT_PARAMS,
    project: Project,
) -> int:
    """Label images with a registered model: a table of labels and class probabilities.

    Files that cannot be read or are not images get their error in the table and the
    summary, and the others are still scored (--strict: exit 1 naming them).

    Parameters
    ----------
    inputs
        folder, manifest .csv/.parquet (path column), image or .npy files, s3://bucket/prefix
    model
        models:/NAME@ALIAS, NAME@ALIAS or NAME/VERSION (default: the project's @champion)
    out
        the table, .parquet or .csv (default: predictions.parquet)
    runtime
        onnx or pyfunc (default: onnx when the version has an ONNX export)
    batch_size
        images per batch (default: 64)
    strict
        exit 1 when any input could not be scored
    """
    from tasks.registry import prediction
    from tasks.stages.preflight import PreflightError

    project, params = open_registry(project, options)
    ref = model or f"{params.registry.model_name}@{params.registry.champion_alias}"
    endpoint = params.storage.dvc_remote_endpoint
    try:  # everything that can be checked before any image is read
        target = prediction.check_output(out, project)
        items = prediction.list_inputs(inputs, project, endpoint)
        choice = prediction.choose_model(ref, runtime)
    except prediction.PredictionError as exc:
        raise PreflightError(str(exc)) from None
    return _run(choice, items, inputs, target, batch_size, strict, params, project)


def _run(choice, items, inputs, target, batch_size, strict, params, project) -> int:
    import tempfile

    from tasks.core import tracking
    from tasks.registry import prediction

    print(
        f"predict: {len(items)} inputs with {choice.name} version {choice.version} "
        f"({choice.runtime})",
        file=sys.stderr,
    )
    experiment_id = tracking.configure(params.storage.tracking_uri, project, params.base.experiment)
    endpoint = params.storage.dvc_remote_endpoint
    fs = prediction.s3_filesystem(endpoint) if any(map(prediction.is_s3, items)) else None
    with tempfile.TemporaryDirectory(prefix="tlp-predict-") as scratch:
        runtime = prediction.load_runtime(choice, Path(scratch), params.base.threads)
        scored, run_id = prediction.predict(
            choice, runtime, items, inputs, target, batch_size, experiment_id, fs, strict
        )
    print(_summary(scored, target, run_id))
    if scored.failed and strict:
        print(
            f"tlp: predict failed: {len(scored.failed)} of {scored.n} inputs could not "
            f"be scored (--strict): {prediction.describe_failures(scored.failed)}",
            file=sys.stderr,
        )
        return 1
    if scored.failed:
        print(f"  failed     : {prediction.describe_failures(scored.failed)}")
    return 0


def _summary(scored, target: Path, run_id: str) -> str:
    ok = scored.n - len(scored.failed)
    return (
        f"predicted {ok} of {scored.n} inputs ({len(scored.failed)} failed) in "
        f"{scored.seconds:.2f} s: {scored.images_per_second:.1f} images/s\n"
        f"  table      : {target}\n"
        f"  MLflow run : {run_id}"
    )


COMMANDS = {"predict": predict}
