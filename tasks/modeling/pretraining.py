"""Stage ``pretrain``'s work: the source model under ``models/source`` (safetensors + card).

Trained on the labelled source from random weights (``train_source``), or a pretrained
checkpoint (``pretrain.checkpoint``, loaded and verified by ``tasks.modeling.checkpoints``):
taken as it is, nothing trained (``adopt_checkpoint``), or with ``train_on_source`` trained
further on the source from it, with the same loop as fine-tuning, resumable after a crash.
With ``transfer.source: auto`` the stage instead ranks ``rank.candidates`` on the target and
keeps the top one (``tasks.transferability.selection.select_source``).

A self-supervised ``pretrain.objective`` (simclr, byol; ``train_self_supervised``) learns
without labels, from random weights or a checkpoint, on ``pretrain.images``: the source's
train split (its labels ignored; an unlabelled folder has none) or the target's train split
and unlabelled pool. It has no classes to predict, so the source is saved without a
classifier (card classes ``()``): every strategy then starts the target with a fresh head.
"""

from __future__ import annotations

import hashlib
import shutil
import time
from pathlib import Path

import torch

from tasks.core import tracking
from tasks.core.context import WORK_DIR, StageContext, write_json
from tasks.core.params import SELF_SUPERVISED
from tasks.data.loading import load_source_tensors, load_tensors
from tasks.data.manifest import MANIFEST, read_manifest
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
    """Resume folder keyed on the params and the data read, so a stale one is never used: the
    source's, and the target's when a self-supervised objective reads it (its images or the
    kNN monitor's)."""
    manifest = (ctx.layout.source_data / MANIFEST).read_bytes()  # holds every image's hash
    if ctx.params.pretrain.objective in SELF_SUPERVISED:
        manifest += (ctx.layout.target_data / MANIFEST).read_bytes()
    key = hashlib.sha256(ctx.params.digest().encode() + manifest).hexdigest()
    return ctx.project_dir / WORK_DIR / "resume" / f"pretrain-{key[:16]}"


def decoded_cache_dir(project_dir: Path) -> Path:
    """Where streamed training keeps decoded images: in the project's work folder, which
    neither git nor DVC versions (``tasks.data.streaming``)."""
    return project_dir / WORK_DIR / CACHE_SUBDIR


def train_source(ctx: StageContext, start: Pretrained | None = None) -> dict:
    """Pretrain ``model.arch`` on ``data/source`` into ``models/source``, from random weights
    or from the checkpoint ``start`` (``pretrain.train_on_source``)."""
    if ctx.params.pretrain.objective in SELF_SUPERVISED:
        return train_self_supervised_source(ctx, start)
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
        tracking.log_params({"arch": arch, **p.pretrain.model_dump(mode="json", exclude={"ssl"})})
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
            "objective": "supervised",
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


def _split_sizes(dataset_dir: Path) -> dict[str, int]:
    return read_manifest(dataset_dir)["split"].value_counts().to_dict()


def self_supervised_images(ctx: StageContext):
    """What a self-supervised objective learns from (``pretrain.images``), and its splits:
    the source's train split, streamed (labels ignored; source-matching preprocessing), or
    the target's train split and unlabelled pool with the target's own preprocessing (never
    its val or test split, which measure the models)."""
    p, layout = ctx.params, ctx.layout
    if p.pretrain.images == "source":
        cache = decoded_cache_dir(ctx.project_dir)
        images, _, _ = load_source_tensors(
            layout.source_data, "train", p, stream=True, cache_dir=cache
        )
        return images, {"source": ("train",)}
    splits = tuple(s for s in ("train", "unlabeled") if _split_sizes(layout.target_data).get(s))
    parts = [load_tensors(layout.target_data, s, p.preprocess)[0] for s in splits]
    return torch.cat(parts), {"target": splits}


def _knn_monitor(ctx: StageContext):
    """The kNN monitor on the labelled target (train images as the bank, val as queries, the
    target's preprocessing), or None when ``pretrain.ssl.monitor_k`` is 0 or there is no val
    split to query (the test split is never looked at during training)."""
    from tasks.modeling.monitor import KnnMonitor

    p, layout = ctx.params, ctx.layout
    if p.pretrain.ssl.monitor_k == 0 or not _split_sizes(layout.target_data).get("val"):
        return None
    bank_x, bank_y, _ = load_tensors(layout.target_data, "train", p.preprocess)
    query_x, query_y, _ = load_tensors(layout.target_data, "val", p.preprocess)
    return KnnMonitor(bank_x, bank_y, query_x, query_y, p.pretrain.ssl.monitor_k)


def train_self_supervised_source(ctx: StageContext, start: Pretrained | None = None) -> dict:
    """Self-supervised pretraining (``pretrain.objective`` simclr or byol) into a headless
    ``models/source``; the kNN accuracy on the target is logged each epoch when monitored."""
    from tasks.modeling.selfsupervised import train_self_supervised

    p, layout = ctx.params, ctx.layout
    images, uses = self_supervised_images(ctx)
    monitor = _knn_monitor(ctx)
    if monitor is not None:
        uses.setdefault("target", ())
        uses["target"] = tuple(dict.fromkeys((*uses["target"], "train", "val")))
    model = _initial_model(ctx, (), start)
    arch = start.arch if start else p.model.arch
    with tracking.child_run("pretrain", ctx.experiment_id, ctx.parent_run_id):
        dump = p.pretrain.model_dump(mode="json")
        tracking.log_params(
            {"arch": arch, **{k: v for k, v in dump.items() if k != "ssl"}}
            | tracking.flat_params({"ssl": dump["ssl"]})
        )
        log_splits(ctx.project_dir, uses)
        if start:
            _log_checkpoint(start.record)
        started = time.perf_counter()
        history = train_self_supervised(
            model,
            images,
            p.pretrain,
            seed=p.base.seed,
            mean=p.preprocess.mean,
            std=p.preprocess.std,
            monitor=monitor,
            on_epoch=lambda epoch, m: tracking.log_epoch(m, epoch),
            device=resolve_device(p.base.device),
            state_dir=_state_dir(ctx),
            progress="pretrain",
        )
        seconds = time.perf_counter() - started
        model.cpu()
        knn = [e["knn_accuracy"] for e in history.epochs if "knn_accuracy" in e]
        result = {
            "source": "checkpoint" if start else "dataset",
            "trained": True,
            "objective": p.pretrain.objective,
            "images": p.pretrain.images,
            "source_test_accuracy": None,  # no labels learnt: nothing to test on the source
            "train_images": len(images),
            "epochs": p.pretrain.epochs,
            "final_train_loss": history.final["train_loss"],
            "knn_accuracy": knn,
            "final_knn_accuracy": knn[-1] if knn else None,
        }
        tracking.log_metrics(
            {
                "train_images": len(images),
                "final_train_loss": result["final_train_loss"],
                "images_per_second": len(images) * p.pretrain.epochs / seconds,
            }
            | ({"final_knn_accuracy": knn[-1]} if knn else {})
        )
    if start:
        result["checkpoint"] = start.record
    if layout.source_model.exists():
        shutil.rmtree(layout.source_model)
    card = ModelCard(arch=arch, classes=(), preprocess=p.preprocess, strategy="source")
    save_checkpoint(model, card, layout.source_model)
    write_json(layout.pretrain_report, result)
    return result
