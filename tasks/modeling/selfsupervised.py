"""Self-supervised pretraining: the backbone learns from unlabelled images by making two
augmented views of each (``tasks.modeling.views``) and learning to match them.

SimCLR (Chen et al. 2020) is contrastive: the two views of an image attract, every other
image of the batch repels (NT-Xent). BYOL (Grill et al. 2020) is not: an online network
predicts a momentum target network's projection of the other view, and the target follows
the online weights by an exponential moving average raised to 1 by a cosine schedule.
Heads, losses and the momentum update are lightly's; the backbone is the timm model's
pooled pre-logit features, so its classifier is neither used nor changed.

The loop reuses fine-tuning's machinery (``tasks.modeling.training``): timm's optimiser and
per-step schedule over the model and the method's heads, the per-epoch resume state, the
divergence check and the log line per epoch. Each epoch may end with the kNN monitor's
accuracy on the labelled target (``tasks.modeling.monitor``).
"""

from __future__ import annotations

import copy
import shutil
from collections.abc import Sequence
from pathlib import Path

import torch

from tasks.core.params import PretrainParams, SelfSupervisedParams
from tasks.modeling.batches import epoch_batches, pooled_features
from tasks.modeling.monitor import KnnMonitor
from tasks.modeling.resume import save_state
from tasks.modeling.training import (
    EpochCallback,
    History,
    Objective,
    _refuse_divergence,
    _report,
    _resume,
    _setup,
    seed_everything,
)
from tasks.modeling.views import two_views


def feature_width(model: torch.nn.Module) -> int:
    """Size of ``pooled_features``: timm's ``head_hidden_size`` where a model has a
    pre-logits layer, else ``num_features``."""
    return getattr(model, "head_hidden_size", None) or model.num_features


class SelfSupervised(Objective):
    """A self-supervised method: its loss on a pair of views, and what follows a step.
    Both views go through the backbone in one pass (one batch of 2N)."""

    def pair_loss(self, model: torch.nn.Module, v1: torch.Tensor, v2: torch.Tensor):
        raise NotImplementedError

    def after_step(self, model: torch.nn.Module, step: int, total_steps: int) -> None:
        """Called after each optimiser step (``step`` counts from 0)."""


class SimCLR(SelfSupervised):
    """NT-Xent on a projection head's outputs of the two views."""

    def __init__(self, model: torch.nn.Module, ssl: SelfSupervisedParams) -> None:
        from lightly.loss import NTXentLoss
        from lightly.models.modules import SimCLRProjectionHead

        self.head = SimCLRProjectionHead(feature_width(model), ssl.hidden_dim, ssl.projection_dim)
        self.criterion = NTXentLoss(temperature=ssl.temperature)

    def extra_modules(self) -> torch.nn.Module:
        return self.head

    def pair_loss(self, model, v1, v2):
        z1, z2 = self.head(pooled_features(model, torch.cat([v1, v2]))).float().chunk(2)
        return self.criterion(z1, z2)


class BYOL(SelfSupervised):
    """Online projection and prediction heads; a target network (a copy of the backbone
    and the projection head) that takes no gradient and moves by EMA only."""

    def __init__(self, model: torch.nn.Module, ssl: SelfSupervisedParams) -> None:
        from lightly.loss import NegativeCosineSimilarity
        from lightly.models.modules import BYOLPredictionHead, BYOLProjectionHead
        from lightly.models.utils import deactivate_requires_grad

        width, hidden, out = feature_width(model), ssl.hidden_dim, ssl.projection_dim
        projection = BYOLProjectionHead(width, hidden, out)
        target = torch.nn.ModuleDict(
            {"backbone": copy.deepcopy(model), "projection": copy.deepcopy(projection)}
        )
        deactivate_requires_grad(target)  # so timm's parameter groups leave it out
        self.modules = torch.nn.ModuleDict(
            {
                "projection": projection,
                "prediction": BYOLPredictionHead(out, hidden, out),
                "target": target,
            }
        )
        self.momentum = ssl.momentum
        self.criterion = NegativeCosineSimilarity()

    def extra_modules(self) -> torch.nn.Module:
        return self.modules

    def pair_loss(self, model, v1, v2):
        both, m = torch.cat([v1, v2]), self.modules
        p1, p2 = m["prediction"](m["projection"](pooled_features(model, both))).float().chunk(2)
        with torch.no_grad():
            target = m["target"]
            z = target["projection"](pooled_features(target["backbone"], both))
            z1, z2 = z.float().chunk(2)
        return 0.5 * (self.criterion(p1, z2) + self.criterion(p2, z1))

    def after_step(self, model, step, total_steps):
        from lightly.models.utils import update_momentum
        from lightly.utils.scheduler import cosine_schedule

        m = cosine_schedule(step, total_steps, self.momentum, 1.0)
        update_momentum(model, self.modules["target"]["backbone"], m)
        update_momentum(self.modules["projection"], self.modules["target"]["projection"], m)


METHODS: dict[str, type[SelfSupervised]] = {"simclr": SimCLR, "byol": BYOL}


def create_method(model: torch.nn.Module, cfg: PretrainParams) -> SelfSupervised:
    """The method ``cfg.objective`` names, its heads sized by ``cfg.ssl`` for ``model``."""
    if cfg.objective not in METHODS:
        raise ValueError(
            f"pretrain.objective: {cfg.objective} is not self-supervised ({', '.join(METHODS)})"
        )
    return METHODS[cfg.objective](model, cfg.ssl)


def _train_epoch(model, modules, method, optimizer, scheduler, images, cfg, views, run) -> dict:
    """One epoch of steps: a batch, two views of it, the method's loss, the optimiser and
    schedule steps, then the method's own update (BYOL's momentum)."""
    gen, device, epoch, steps, total = run
    modules.train()
    order = getattr(images, "epoch_order", None)  # a streamed source's own order
    batches = epoch_batches(len(images), steps, cfg.batch_size, gen, order)
    cuda = device.type == "cuda"
    total_loss = torch.zeros((), dtype=torch.float64, device=device)  # read once per epoch
    seen = 0
    for step, idx in enumerate(batches):
        v1, v2 = two_views(images[idx].to(device), cfg.ssl, gen, *views)
        if cuda:
            v1, v2 = (v.contiguous(memory_format=torch.channels_last) for v in (v1, v2))
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda):
            loss = method.pair_loss(model, v1, v2)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        done = epoch * steps + step
        scheduler.step_update(num_updates=done + 1)
        method.after_step(model, done, total)
        total_loss += loss.detach().double() * len(idx)
        seen += len(idx)
    scheduler.step(epoch + 1)
    mean_loss = total_loss.item() / seen
    return {
        "train_loss": mean_loss,
        "objective_loss": mean_loss,
        "lr": max(g["lr"] for g in optimizer.param_groups),
    }


def train_self_supervised(
    model: torch.nn.Module,
    images,
    cfg: PretrainParams,
    *,
    seed: int,
    mean: Sequence[float],
    std: Sequence[float],
    monitor: KnnMonitor | None = None,
    on_epoch: EpochCallback | None = None,
    device: torch.device | None = None,
    state_dir: Path | None = None,
    progress: str | None = None,
) -> History:
    """Train ``model``'s backbone in place on unlabelled ``images`` with ``cfg.objective``.

    ``images``: preprocessed [N, C, H, W] inputs (normalised with ``mean``/``std``) or a
    ``tasks.data.streaming.ShardImages``. Epoch metrics: ``train_loss`` and
    ``objective_loss`` (both the method's loss), ``lr``, and ``knn_accuracy`` with a
    ``monitor``. Resumable from ``state_dir`` like ``training.fit``, which is removed at
    the end; ``progress`` names the run in the log lines and the bar.
    """
    from tqdm.auto import tqdm

    if len(images) == 0:
        raise ValueError("no images to pretrain on")
    gen = seed_everything(seed)
    device = device or torch.device("cpu")
    method = create_method(model, cfg)
    modules, optimizer, scheduler, steps = _setup(
        model, method, cfg, None, None, device, len(images)
    )
    history, start = History(), 0
    if state_dir is not None:
        start, _ = _resume(state_dir, modules, optimizer, scheduler, gen, history, steps)
    off = True if progress is None else None  # a bar only on a terminal
    bar = tqdm(range(start, cfg.epochs), desc=progress, unit="epoch", disable=off)
    for epoch in bar:
        run = (gen, device, epoch, steps, cfg.epochs * steps)
        metrics = _train_epoch(
            model, modules, method, optimizer, scheduler, images, cfg, (mean, std), run
        )
        if monitor is not None:
            metrics["knn_accuracy"] = monitor(model)
        _refuse_divergence(modules, metrics, progress, epoch)
        history.epochs.append(metrics)
        _report(bar, progress, epoch, cfg.epochs, metrics, score="knn_accuracy")
        if state_dir is not None:
            save_state(state_dir, epoch, modules, optimizer, gen, history, None)
        if on_epoch is not None:
            on_epoch(epoch, metrics)
    if state_dir is not None:
        shutil.rmtree(state_dir, ignore_errors=True)
    return history
