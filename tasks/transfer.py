"""Stage ``transfer``: every strategy in ``transfer.strategies`` trained on the labelled target.

``scratch`` is the same architecture from random weights (the baseline that makes transfer
gain measurable); ``full`` fine-tunes every layer of the source model with layer-wise LR
decay, so early, general layers move less than the head.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable

import torch

from tasks import tracking
from tasks.context import StageContext, write_json
from tasks.datasets import load_tensors
from tasks.models import ModelCard, create_model, load_checkpoint, resolve_device, save_checkpoint
from tasks.training import History, fit


def _scratch(
    ctx: StageContext, classes: tuple[str, ...], train, val
) -> tuple[torch.nn.Module, History]:
    p = ctx.params
    model = create_model(p.model.arch, len(classes), p.preprocess.channels, seed=p.base.seed)
    history = _fit(ctx, model, train, val, lr=p.transfer.scratch_lr, layer_decay=None)
    return model, history


def _full(
    ctx: StageContext, classes: tuple[str, ...], train, val
) -> tuple[torch.nn.Module, History]:
    p = ctx.params
    model, source_card = load_checkpoint(ctx.layout.source_model)
    if not (p.transfer.keep_head and source_card.classes == classes):
        torch.manual_seed(p.base.seed)
        model.reset_classifier(len(classes))  # timm: a fresh head sized for the target
    history = _fit(ctx, model, train, val, lr=p.transfer.lr, layer_decay=p.transfer.layer_decay)
    return model, history


def _fit(ctx, model, train, val, lr, layer_decay) -> History:
    p = ctx.params
    return fit(
        model,
        train,
        p.transfer,
        seed=p.base.seed,
        lr=lr,
        layer_decay=layer_decay,
        val=val,
        on_epoch=lambda epoch, m: tracking.log_epoch(m, epoch),
        device=resolve_device(p.base.device),
    )


STRATEGIES: dict[str, Callable] = {"scratch": _scratch, "full": _full}


def run(ctx: StageContext) -> dict:
    p, layout = ctx.params, ctx.layout
    x_train, y_train, classes = load_tensors(layout.target_data, "train", p.preprocess)
    x_val, y_val, _ = load_tensors(layout.target_data, "val", p.preprocess)
    if layout.candidates.exists():
        shutil.rmtree(layout.candidates)
    results = {}
    for name in p.transfer.strategies:
        with tracking.child_run(f"transfer/{name}", ctx.experiment_id, ctx.parent_run_id):
            tracking.log_params({"strategy": name, **p.transfer.model_dump(mode="json")})
            model, history = STRATEGIES[name](ctx, classes, (x_train, y_train), (x_val, y_val))
            card = ModelCard(
                arch=p.model.arch, classes=classes, preprocess=p.preprocess, strategy=name
            )
            save_checkpoint(model.cpu(), card, layout.candidates / name)
            results[name] = {
                "first_train_loss": history.epochs[0]["train_loss"],
                "final_train_loss": history.final["train_loss"],
                "val_accuracy": history.final.get("val_accuracy", float("nan")),
                "train_images": len(y_train),
            }
    write_json(layout.transfer_report, results)
    return results
