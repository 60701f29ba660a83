"""Stage ``pretrain``'s work: the source model under ``models/source`` (safetensors + card).

Trained on the labelled source from random weights (``train_source``), or a pretrained
checkpoint (``pretrain.checkpoint``, loaded and verified by ``tasks.modeling.checkpoints``):
taken as it is, nothing trained (``adopt_checkpoint``), or with ``train_on_source`` trained
further on the source from it, with the same loop as fine-tuning, resumable after a crash.
With ``transfer.source: auto`` the stage instead ranks ``rank.candidates`` on the target and
keeps the top one (``tasks.transferability.selection.select_source``).
"""

from __future__ import annotations

import hashlib
import shutil
import time
from pathlib import Path

import torch

from tasks.core import tracking
from tasks.core.context import WORK_DIR, StageContext, write_json
from tasks.data.loading import load_source_tensors
from tasks.data.manifest import MANIFEST
from tasks.data.mlflow_datasets import log_splits
from tasks.data.streaming import CACHE_SUBDIR
from tasks.modeling.batches import accuracy
from tasks.modeling.checkpoints import Pretrained, record_tags
from tasks.modeling.models import ModelCard, create_model, resolve_device, save_checkpoint
from tasks.modeling.training import fit


def _initial_model(ctx: StageContext, classes: tuple[str, ...], start: Pretrained | None):
    """Random weights, or the checkpoint with a fresh head for the source's classes (seeded)
    unless its head already predicts them."""
    p = ctx.params
    if start is None:
        return create_model(p.model.arch, len(classes), p.preprocess.channels, seed=p.base.seed)
    if start.classes != classes:
        torch.manual_seed(p.base.seed)
        start.model.reset_classifier(len(classes))
    return start.model


def _log_checkpoint(record: dict) -> None:
    """The checkpoint on the active run: params to compare runs by, tags for lineage."""
    tracking.log_params({f"checkpoint_{k}": v for k, v in record.items() if k != "file"})
    tracking.set_tags(record_tags(record))


def adopt_checkpoint(ctx: StageContext, start: Pretrained) -> dict:
    """A pretrained checkpoint as the source, nothing trained: saved to ``models/source`` (a
    DVC output, so the weights are versioned) with its head's classes and the run's
    preprocessing, and its verification record in ``reports/pretrain.json``."""
    p, layout = ctx.params, ctx.layout
    with tracking.child_run("pretrain", ctx.experiment_id, ctx.parent_run_id):
        tracking.log_params({"arch": start.arch, "train_on_source": False})
        _log_checkpoint(start.record)
    if layout.source_model.exists():
        shutil.rmtree(layout.source_model)
    card = ModelCard(
        arch=start.arch, classes=start.classes, preprocess=p.preprocess, strategy="source"
    )
    save_checkpoint(start.model.cpu(), card, layout.source_model)
    result = {"source": "checkpoint", "trained": False, "checkpoint": start.record}
    write_json(layout.pretrain_report, result)
    return result


def _state_dir(ctx: StageContext) -> Path:
    """Resume folder keyed on the params and the source data, so a stale one is never used."""
    manifest = (ctx.layout.source_data / MANIFEST).read_bytes()  # holds every image's hash
    key = hashlib.sha256(ctx.params.digest().encode() + manifest).hexdigest()
    return ctx.project_dir / WORK_DIR / "resume" / f"pretrain-{key[:16]}"


def decoded_cache_dir(project_dir: Path) -> Path:
    """Where streamed training keeps decoded images: in the project's work folder, which
    neither git nor DVC versions (``tasks.data.streaming``)."""
    return project_dir / WORK_DIR / CACHE_SUBDIR


def train_source(ctx: StageContext, start: Pretrained | None = None) -> dict:
    """Pretrain ``model.arch`` on ``data/source`` into ``models/source``, from random weights
    or from the checkpoint ``start`` (``pretrain.train_on_source``)."""
    p, layout = ctx.params, ctx.layout
    # streamed from the shards batch by batch: memory does not grow with the source; decoded
    # once into the cache when it fits storage.decoded_cache_mb (the same results either way)
    cache = decoded_cache_dir(ctx.project_dir)
    x_train, y_train, classes = load_source_tensors(
        layout.source_data, "train", p, stream=True, cache_dir=cache
    )
    x_test, y_test, _ = load_source_tensors(
        layout.source_data, "test", p, stream=True, cache_dir=cache
    )
    device = resolve_device(p.base.device)
    model = _initial_model(ctx, classes, start)
    arch = start.arch if start else p.model.arch
    with tracking.child_run("pretrain", ctx.experiment_id, ctx.parent_run_id):
        tracking.log_params({"arch": arch, **p.pretrain.model_dump(mode="json")})
        log_splits(ctx.project_dir, {"source": ("train", "test")})
        if start:
            _log_checkpoint(start.record)
        started = time.perf_counter()
        history = fit(
            model,
            (x_train, y_train),
            p.pretrain,
            seed=p.base.seed,
            val=(x_test, y_test),
            on_epoch=lambda epoch, m: tracking.log_epoch(m, epoch),
            device=device,
            state_dir=_state_dir(ctx),
            progress="pretrain",
        )
        seconds = time.perf_counter() - started
        model.cpu()
        result = {
            "source": "checkpoint" if start else "dataset",
            "trained": True,
            "source_test_accuracy": accuracy(model, x_test, y_test),
            "train_images": len(y_train),
            "epochs": p.pretrain.epochs,
            "final_train_loss": history.final["train_loss"],
        }
        numbers = {k: v for k, v in result.items() if type(v) in (int, float)}
        tracking.log_metrics(
            {**numbers, "images_per_second": len(y_train) * p.pretrain.epochs / seconds}
        )
    if start:
        result["checkpoint"] = start.record
    card = ModelCard(arch=arch, classes=classes, preprocess=p.preprocess, strategy="source")
    save_checkpoint(model, card, layout.source_model)
    write_json(layout.pretrain_report, result)
    return result
