"""One training loop, shared by pretraining and fine-tuning.

Inputs are preprocessed once into tensors (the datasets are small images), so an epoch is
pure compute. Optimiser and schedule come from timm: ``create_optimizer_v2`` builds the
parameter groups (with layer-wise LR decay when asked) and timm's scheduler applies each
group's ``lr_scale``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from tasks.params import TrainParams

EpochCallback = Callable[[int, dict[str, float]], None]


@dataclass
class History:
    """Per-epoch metrics of one training run."""

    epochs: list[dict[str, float]] = field(default_factory=list)

    @property
    def final(self) -> dict[str, float]:
        return self.epochs[-1] if self.epochs else {}


def seed_everything(seed: int) -> torch.Generator:
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def random_shift(batch: torch.Tensor, max_shift: int, gen: torch.Generator) -> torch.Tensor:
    """Translate each image by up to ``max_shift`` pixels (edge padding), vectorised."""
    if max_shift <= 0:
        return batch
    n, _, h, w = batch.shape
    padded = F.pad(batch, (max_shift,) * 4, mode="replicate")
    dx = torch.randint(0, 2 * max_shift + 1, (n,), generator=gen)
    dy = torch.randint(0, 2 * max_shift + 1, (n,), generator=gen)
    rows = (dy[:, None] + torch.arange(h)[None, :])[:, None, :, None]
    cols = (dx[:, None] + torch.arange(w)[None, :])[:, None, None, :]
    idx_n = torch.arange(n)[:, None, None, None]
    idx_c = torch.arange(batch.shape[1])[None, :, None, None]
    return padded[idx_n, idx_c, rows, cols]


@torch.no_grad()
def predict_logits(
    model: torch.nn.Module, inputs: torch.Tensor, batch_size: int = 512
) -> torch.Tensor:
    model.eval()
    device = next(model.parameters()).device
    outs = [
        model(inputs[i : i + batch_size].to(device)).float().cpu()
        for i in range(0, len(inputs), batch_size)
    ]
    return torch.cat(outs) if outs else torch.empty(0)


def accuracy(model: torch.nn.Module, inputs: torch.Tensor, labels: torch.Tensor) -> float:
    if len(labels) == 0:
        return math.nan
    return (predict_logits(model, inputs).argmax(1) == labels).float().mean().item()


def create_optimizer(
    model: torch.nn.Module, cfg: TrainParams, lr: float, layer_decay: float | None
):
    from timm.optim import create_optimizer_v2

    return create_optimizer_v2(
        model, opt=cfg.optimizer, lr=lr, weight_decay=cfg.weight_decay, layer_decay=layer_decay
    )


def fit(
    model: torch.nn.Module,
    train: tuple[torch.Tensor, torch.Tensor],
    cfg: TrainParams,
    *,
    seed: int,
    lr: float | None = None,
    layer_decay: float | None = None,
    val: tuple[torch.Tensor, torch.Tensor] | None = None,
    on_epoch: EpochCallback | None = None,
    device: torch.device | None = None,
) -> History:
    """Train ``model`` in place on preprocessed (inputs, labels); return per-epoch metrics."""
    from timm.scheduler import create_scheduler_v2

    inputs, labels = train
    if len(labels) == 0:
        raise ValueError("training set is empty")
    gen = seed_everything(seed)
    device = device or torch.device("cpu")
    model.to(device)
    optimizer = create_optimizer(model, cfg, lr or cfg.lr, layer_decay)
    steps_per_epoch = math.ceil(len(labels) / cfg.batch_size)
    scheduler, _ = create_scheduler_v2(
        optimizer,
        sched=cfg.scheduler,
        num_epochs=cfg.epochs,
        warmup_epochs=cfg.warmup_epochs,
        step_on_epochs=False,
        updates_per_epoch=steps_per_epoch,
    )
    history = History()
    for epoch in range(cfg.epochs):
        model.train()
        order = torch.randperm(len(labels), generator=gen)
        total_loss, correct = 0.0, 0
        for step in range(steps_per_epoch):
            idx = order[step * cfg.batch_size : (step + 1) * cfg.batch_size]
            x = random_shift(inputs[idx], cfg.augment_shift, gen).to(device)
            y = labels[idx].to(device)
            logits = model(x)
            loss = F.cross_entropy(logits, y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step_update(num_updates=epoch * steps_per_epoch + step + 1)
            total_loss += loss.item() * len(idx)
            correct += (logits.argmax(1) == y).sum().item()
        scheduler.step(epoch + 1)
        metrics = {
            "train_loss": total_loss / len(labels),
            "train_accuracy": correct / len(labels),
            "lr": optimizer.param_groups[0]["lr"],
        }
        if val is not None and len(val[1]):
            metrics["val_accuracy"] = accuracy(model, *val)
        history.epochs.append(metrics)
        if on_epoch is not None:
            on_epoch(epoch, metrics)
    return history
