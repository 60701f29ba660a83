"""Stage ``register``: the best candidate as a pyfunc model version, with lineage and aliases."""

from __future__ import annotations

from pathlib import Path

import mlflow
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from tasks import tracking
from tasks.context import StageContext, read_json, write_json
from tasks.serving import CHECKPOINT_ARTIFACT


def _pip_requirements() -> list[str]:
    from importlib.metadata import version

    packages = [
        "torch",
        "torchvision",
        "timm",
        "safetensors",
        "numpy",
        "pandas",
        "pillow",
        "pydantic",
    ]
    return [f"{name}=={version(name)}" for name in packages] + [f"mlflow=={mlflow.__version__}"]


def log_model(ckpt_dir: Path, registered_model_name: str):
    """Log the checkpoint as a models-from-code pyfunc (nothing pickled) and register it."""
    return mlflow.pyfunc.log_model(
        name="model",
        python_model=str(Path(__file__).with_name("_pyfunc_entry.py")),
        artifacts={CHECKPOINT_ARTIFACT: str(ckpt_dir)},
        pip_requirements=_pip_requirements(),  # explicit: inferring them costs a subprocess
        registered_model_name=registered_model_name,
    )


def tag_version(name: str, version: str, tags: dict[str, str]) -> None:
    client = MlflowClient()
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, value)


def alias_version(name: str, alias: str) -> str | None:
    """The version an alias points to, or None."""
    try:
        return MlflowClient().get_model_version_by_alias(name, alias).version
    except MlflowException:
        return None


def set_alias(name: str, alias: str, version: str) -> None:
    MlflowClient().set_registered_model_alias(name, alias, version)


def version_aliases(name: str, version: str) -> list[str]:
    return list(MlflowClient().get_model_version(name, version).aliases)


def version_exists(name: str, version: str) -> bool:
    try:
        MlflowClient().get_model_version(name, version)
        return True
    except MlflowException:
        return False


def lineage_tags(ctx: StageContext) -> dict[str, str]:
    """Git commit, params hash, DVC hashes of data and checkpoints, Prefect and MLflow runs."""
    from tasks import versioning

    commit, dirty = versioning.git_revision(ctx.project_dir)
    tags = {
        "git_commit": commit,
        "git_dirty": str(dirty).lower(),
        "params_hash": ctx.params.digest(),
        "prefect_flow_run_id": ctx.flow_run.get("id", "none"),
        "prefect_flow_run_url": ctx.flow_run.get("url", "none"),
        "mlflow_parent_run_id": ctx.parent_run_id or "none",
    }
    for path, digest in versioning.output_hashes(ctx.project_dir).items():
        if path.startswith(("data/", "models/")):
            tags[f"dvc.{path}"] = digest
    return tags


def run(ctx: StageContext) -> dict:
    """Log the best candidate, register a version, tag its lineage, set the aliases."""
    layout, r = ctx.layout, ctx.params.registry
    metrics = read_json(layout.metrics)
    best = metrics["best"]
    tags = {
        **lineage_tags(ctx),
        "strategy": best,
        "test_accuracy": f"{metrics['candidates'][best]['accuracy']:.4f}",
    }
    with tracking.child_run("register", ctx.experiment_id, ctx.parent_run_id) as run_id:
        tracking.set_tags(tags)
        info = log_model(layout.candidates / best, r.model_name)
    if ctx.parent_run_id:
        tracking.set_tags(tags, run_id=ctx.parent_run_id)
    version = str(info.registered_model_version)
    tag_version(r.model_name, version, tags)
    set_alias(r.model_name, r.challenger_alias, version)
    if alias_version(r.model_name, r.champion_alias) is None:
        set_alias(r.model_name, r.champion_alias, version)  # first model: nothing to beat yet
    registration = {
        "model_name": r.model_name,
        "version": version,
        "model_uri": f"models:/{r.model_name}/{version}",
        "aliases": version_aliases(r.model_name, version),
        "strategy": best,
        "run_id": run_id,
    }
    write_json(layout.registration, registration)
    return registration


def still_valid(ctx: StageContext) -> bool:
    """A skipped ``register`` is only valid while its version still exists in this store."""
    path = ctx.layout.registration
    if not path.is_file():
        return False
    saved = read_json(path)
    return saved.get("model_name") == ctx.params.registry.model_name and version_exists(
        saved["model_name"], saved["version"]
    )
