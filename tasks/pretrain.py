"""Stage ``pretrain``: a timm model trained on the source dataset, saved as safetensors + card."""

from __future__ import annotations

import time

from tasks import tracking
from tasks.context import StageContext, write_json
from tasks.datasets import load_tensors
from tasks.models import ModelCard, create_model, resolve_device, save_checkpoint
from tasks.training import accuracy, fit


def run(ctx: StageContext) -> dict:
    p, layout = ctx.params, ctx.layout
    degrade = p.pretrain.source_resolution
    x_train, y_train, classes = load_tensors(layout.source_data, "train", p.preprocess, degrade)
    x_test, y_test, _ = load_tensors(layout.source_data, "test", p.preprocess, degrade)
    device = resolve_device(p.base.device)
    model = create_model(p.model.arch, len(classes), p.preprocess.channels, seed=p.base.seed)
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
