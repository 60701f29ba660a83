"""Stage ``register``: the best candidate as a new MLflow model version, tagged and @challenger.

Its ONNX export is made and checked for parity first (``tasks/registry/export.py``): a
failing export stops the stage before anything is logged or registered.

``@champion`` is moved only by the promotion gate (``flows/promote.py``) or by a person.
Run outside the flow (``tlp stage register`` from ``dvc repro`` or ``dvc exp run``: no
pipeline parent run), it registers the version but moves no alias: nothing gated it.

The model is bound to this run's task (tasks/registry/identity.py): created with the task's
tags, or refused when it holds another task. ``tlp.registration=complete`` is the last tag
set, so a version cut short (kill -9) is told apart and never gated (``tlp audit``).
"""

from __future__ import annotations

import logging

import mlflow

from tasks.core import tracking
from tasks.core.context import StageContext, read_json, write_json
from tasks.data.mlflow_datasets import ALL, log_splits
from tasks.registry import identity
from tasks.registry.aliases import mark_newest
from tasks.registry.export import export_candidate, log_export
from tasks.registry.modelcard import publish_model_card
from tasks.registry.publishing import (
    first_test_image,
    lineage_files,
    lineage_tags,
    log_model,
    search_tags,
    tag_version,
    version_aliases,
    version_exists,
)

log = logging.getLogger(__name__)


def run(ctx: StageContext) -> dict:
    """Log the best candidate, register a version, tag its lineage, set the aliases."""
    layout, r = ctx.layout, ctx.params.registry
    metrics = read_json(layout.metrics)
    best = metrics["best"]
    tags = {
        **lineage_tags(ctx),
        **search_tags(ctx, best),
        "strategy": best,
        "test_accuracy": f"{metrics['candidates'][best]['accuracy']:.4f}",
    }
    exported = export_candidate(ctx, best)  # parity checked first: a failure registers nothing
    task = identity.task_of(ctx.params.data.target, ctx.project_dir)
    identity.ensure_model(r.model_name, task)  # a model of another task: nothing registered
    outside = ctx.parent_run_id is None
    tags.update(task.tags())
    if outside:
        tags[identity.OUTSIDE_FLOW] = "true"
    with tracking.child_run("register", ctx.experiment_id, ctx.parent_run_id) as run_id:
        tracking.set_tags(tags)
        for path in lineage_files(ctx.project_dir):  # what `tlp reproduce` reruns from
            mlflow.log_artifact(str(path), artifact_path="lineage")
        export_tags = log_export(exported, ctx.project_dir)
        info = log_model(
            layout.candidates / best,
            r.model_name,
            first_test_image(layout),
            ctx.params.data.max_image_pixels,
        )
    if ctx.parent_run_id:
        tracking.set_tags(tags, run_id=ctx.parent_run_id)
    version = str(info.registered_model_version)
    tag_version(r.model_name, version, {**tags, **export_tags, "register_run_id": run_id})
    # @champion is moved only by the promotion gate (flows/promote.py) or by a person
    rules = ctx.params.promote
    if not outside:
        mark_newest(
            ctx.project_dir,
            r.model_name,
            r.challenger_alias,
            version,
            rules.retries,
            rules.retry_delay,
        )
    registration = {
        "model_name": r.model_name,
        "version": version,
        "model_uri": f"models:/{r.model_name}/{version}",
        "aliases": version_aliases(r.model_name, version),
        "strategy": best,
        "run_id": run_id,
    }
    write_json(layout.registration, registration)
    log_splits(ctx.project_dir, ALL, run_id)  # the data behind the version, on the run it names
    publish_model_card(ctx, registration)  # reports/model_card.md, artifact and description
    tag_version(r.model_name, version, {identity.REGISTRATION: identity.COMPLETE})  # last
    aliases = ", ".join(f"@{a}" for a in registration["aliases"]) or "no alias"
    log.info("register: %s version %s (%s, %s)", r.model_name, version, best, aliases)
    if outside:
        log.warning(
            "register: run outside the pipeline flow, so no alias moved and nothing gated it; "
            "gate it with `tlp promote %s %s --reason ...`",
            r.model_name,
            version,
        )
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
