"""Stage ``pretrain``: a timm model trained on the source dataset, saved as safetensors + card.

The model starts from random weights, or from a local timm checkpoint file
(``pretrain.checkpoint`` with ``train_on_source``; timm adapts ``in_chans`` and ``num_classes``), and is then
trained on the source with the same loop as fine-tuning, resumable after a crash.
With ``transfer.source: auto`` the stage instead ranks ``rank.candidates`` on the target
and keeps the top one (``tasks.transferability.selection.select_source``).
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import torch

from tasks.core import tracking
from tasks.core.context import WORK_DIR, StageContext, write_json
from tasks.data.loading import load_source_tensors
from tasks.data.manifest import MANIFEST
from tasks.modeling.batches import accuracy
from tasks.modeling.models import (
    ModelCard,
    create_from_file,
    create_model,
    resolve_device,
    save_checkpoint,
)
from tasks.modeling.training import fit


def _initial_model(ctx: StageContext, num_classes: int):
    p = ctx.params
    if p.pretrain.checkpoint is None:
        return create_model(p.model.arch, num_classes, p.preprocess.channels, seed=p.base.seed)
    torch.manual_seed(p.base.seed)  # the adapted head is freshly initialised: seed it
    file = ctx.project_dir / p.pretrain.checkpoint
    return create_from_file(p.model.arch, file, num_classes, p.preprocess.channels)


def _state_dir(ctx: StageContext) -> Path:
    """Resume folder keyed on the params and the source data, so a stale one is never used."""
    manifest = (ctx.layout.source_data / MANIFEST).read_bytes()  # holds every image's hash
    key = hashlib.sha256(ctx.params.digest().encode() + manifest).hexdigest()
    return ctx.project_dir / WORK_DIR / "resume" / f"pretrain-{key[:16]}"


def train_source(ctx: StageContext) -> dict:
    """Pretrain ``model.arch`` on ``data/source`` into ``models/source``."""
    p, layout = ctx.params, ctx.layout
    # streamed from the PNG files batch by batch: memory does not grow with the source
    x_train, y_train, classes = load_source_tensors(layout.source_data, "train", p, stream=True)
    x_test, y_test, _ = load_source_tensors(layout.source_data, "test", p, stream=True)
    device = resolve_device(p.base.device)
    model = _initial_model(ctx, len(classes))
    with tracking.child_run("pretrain", ctx.experiment_id, ctx.parent_run_id):
        tracking.log_params({"arch": p.model.arch, **p.pretrain.model_dump(mode="json")})
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
            "source_test_accuracy": accuracy(model, x_test, y_test),
            "train_images": len(y_train),
            "epochs": p.pretrain.epochs,
            "final_train_loss": history.final["train_loss"],
        }
        tracking.log_metrics(
            {**result, "images_per_second": len(y_train) * p.pretrain.epochs / seconds}
        )
    card = ModelCard(arch=p.model.arch, classes=classes, preprocess=p.preprocess, strategy="source")
    save_checkpoint(model, card, layout.source_model)
    write_json(layout.pretrain_report, result)
    return result
