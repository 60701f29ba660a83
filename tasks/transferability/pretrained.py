"""``pretrain.checkpoint`` at stage level: a registered model is fetched from the MLflow store
(the registry sits above ``tasks.modeling``), every kind is then loaded and verified by
``tasks.modeling.checkpoints``; and whether the checkpoint a finished pretrain stage recorded
is still the one the params name (DVC sees the params string, not the file behind it).
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

from tasks.core.context import WORK_DIR, StageContext, read_json
from tasks.core.params.checkpoints import CheckpointSpec, parse_checkpoint
from tasks.modeling.checkpoints import KEY, CheckpointError, Pretrained, load, locate, sha256_file

REGISTRY_DIR = "sources/registry"  # under WORK_DIR: downloaded registered checkpoints


def registered_version(uri: str) -> tuple[str, str, str]:
    """``models:/NAME@ALIAS`` or ``models:/NAME/VERSION`` -> (name, version, run id), now."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    body = uri.removeprefix("models:/")
    client = MlflowClient()
    try:
        if "@" in body:
            name, alias = body.split("@", 1)
            mv = client.get_model_version_by_alias(name, alias)
        else:
            name, version = body.rsplit("/", 1)
            mv = client.get_model_version(name, version)
    except MlflowException as exc:
        reason = exc.message.splitlines()[0]
        raise CheckpointError(f"{uri}: not in the registry ({reason})") from None
    return mv.name, str(mv.version), mv.run_id or "none"


def fetch_registered(uri: str, dst: Path) -> tuple[Path, str]:
    """Download a registered tlp model's checkpoint folder into ``dst``; returns the folder and
    its location ``models:/NAME/VERSION (run RUN_ID)`` (an alias resolved once, here)."""
    import mlflow
    from mlflow.exceptions import MlflowException

    from tasks.modeling.models import CARD

    name, version, run_id = registered_version(uri)
    pinned = f"models:/{name}/{version}"
    if dst.exists():
        shutil.rmtree(dst)
    dst.mkdir(parents=True)
    try:
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=pinned, dst_path=str(dst)))
    except MlflowException as exc:
        raise CheckpointError(f"{uri}: {exc.message.splitlines()[0]}") from None
    cards = sorted(local.rglob(CARD))
    if not cards:
        raise CheckpointError(f"{uri} holds no checkpoint ({CARD}); not a tlp model?")
    return cards[0].parent, f"{pinned} (run {run_id})"


def registry_dir(project_dir: Path, uri: str) -> Path:
    """Where a registered checkpoint is downloaded: one folder per URI, in file-name letters."""
    return project_dir / WORK_DIR / REGISTRY_DIR / re.sub(r"[^A-Za-z0-9_-]+", "_", uri).strip("_")


def load_checkpoint_source(ctx: StageContext) -> Pretrained:
    """The model ``pretrain.checkpoint`` names, for the run's channels, with its record; a
    problem is one line starting ``pretrain.checkpoint:``."""
    p = ctx.params
    spec = parse_checkpoint(p.pretrain.checkpoint)
    try:
        folder = location = None
        if spec.kind == "registry":
            folder, location = fetch_registered(
                spec.value, registry_dir(ctx.project_dir, spec.value)
            )
        return load(spec, p.model.arch, p.preprocess.channels, ctx.project_dir, folder, location)
    except CheckpointError as exc:
        raise CheckpointError(f"{KEY}: {exc}") from None


def make_source(ctx: StageContext) -> dict:
    """The source model without ranking: trained on the source from random weights, a
    checkpoint taken as it is, or a checkpoint trained further (``train_on_source``)."""
    from tasks.modeling import pretraining

    if ctx.params.pretrain.checkpoint is None:
        return pretraining.train_source(ctx)
    start = load_checkpoint_source(ctx)
    if not ctx.params.pretrain.train_on_source:
        return pretraining.adopt_checkpoint(ctx, start)
    return pretraining.train_source(ctx, start)


def _same_checkpoint(ctx: StageContext, spec: CheckpointSpec, recorded: dict) -> bool:
    if spec.kind == "hub":  # not checked without the network: the name is the identity
        return True
    if spec.kind == "registry":  # a version's files never change; an alias may move
        name, version, _ = registered_version(spec.value)
        return recorded.get("location", "").startswith(f"models:/{name}/{version} ")
    located = locate(spec, ctx.params.model.arch, ctx.project_dir)
    return sha256_file(located.file) == recorded.get("sha256")


def still_valid(ctx: StageContext) -> bool:
    """A source made from a checkpoint is stale when the checkpoint behind the same params
    string changed: another file (sha256), or an alias now on another version."""
    text = ctx.params.pretrain.checkpoint
    if text is None or ctx.params.transfer.source == "auto":
        return True
    try:
        recorded = read_json(ctx.layout.pretrain_report).get("checkpoint") or {}
        spec = parse_checkpoint(text)
        return recorded.get("spec") == str(spec) and _same_checkpoint(ctx, spec, recorded)
    except (OSError, ValueError):  # no report, or the checkpoint is gone: let the stage say
        return False
