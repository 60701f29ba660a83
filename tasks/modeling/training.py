"""One training loop, shared by pretraining and every fine-tuning strategy.

Inputs are preprocessed once into tensors (the datasets are small images), so an epoch is
pure compute. Optimiser and schedule come from timm: ``create_optimizer_v2`` gets timm's
parameter groups (with layer-wise LR decay when asked) and timm's scheduler applies each
group's ``lr_scale``. What a strategy adds to the plain cross-entropy (a domain
discriminator, an MMD term, a penalty toward the source weights, a second head) is an
``Objective``: its extra modules are optimised and checkpointed with the model.

Resumable: with ``state_dir`` set, every epoch ends with a checkpoint
(``tasks.modeling.resume``); a rerun after a crash continues from the last complete epoch
and, on CPU, ends with exactly the metrics of an uninterrupted run. The directory is
removed once training finishes. Each epoch's loss and val accuracy, read once per epoch
anyway, go to the log (a line per epoch) and, on a terminal, to a tqdm bar.
"""

from __future__ import annotations

import logging
import math
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from tasks.core.params import TrainParams
from tasks.modeling.batches import (
    accuracy,
    epoch_batches,
    random_shift,
    steps_per_epoch,
)
from tasks.modeling.resume import load_state, save_state

log = logging.getLogger(__name__)
EpochCallback = Callable[[int, dict[str, float]], None]
# marks a per-epoch record: on a terminal the bar shows it (tasks/core/logs.py). A literal, so
# that the console's code is not a dependency of the training stages in dvc.yaml
EPOCH_RECORD = {"tlp_progress": True}


@dataclass
class History:
    """Per-epoch metrics of one training run, plus where early stopping picked the weights."""

    epochs: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int | None = None
    stopped_early: bool = False

    @property
    def final(self) -> dict[str, float]:
        return self.epochs[-1] if self.epochs else {}


def seed_everything(seed: int) -> torch.Generator:
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


class Objective:
    """Plain cross-entropy; strategies subclass it to add terms, data and modules."""

    def extra_modules(self) -> torch.nn.Module | None:
        """Modules trained alongside the model (optimised and checkpointed with it)."""
        return None

    def weight_decay_groups(self) -> bool:
        """False when the objective regularises weights itself (L2-SP)."""
        return True

    def loss(
        self, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, ctx: StepContext
    ) -> tuple[torch.Tensor, torch.Tensor]:
        logits = model(x)
        return F.cross_entropy(logits, y), logits


@dataclass
class StepContext:
    """What an objective may need at one step: randomness, progress, device, augmentation."""

    gen: torch.Generator
    progress: float  # 0 at the first step, 1 at the last
    device: torch.device
    augment_shift: int
    total_steps: int = 1

    def sample(
        self, inputs: torch.Tensor, n: int, weights: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``n`` random augmented rows of ``inputs`` on the device (seeded); with ``weights``
        (one per row, on the CPU) a row is drawn with probability proportional to its weight."""
        idx = self._rows(len(inputs), n, weights)
        return random_shift(inputs[idx], self.augment_shift, self.gen).to(self.device)

    def sample_labelled(
        self, inputs: torch.Tensor, labels: torch.Tensor, n: int, weights=None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        idx = self._rows(len(inputs), n, weights)
        x = random_shift(inputs[idx], self.augment_shift, self.gen).to(self.device)
        return x, labels[idx].to(self.device)

    def _rows(self, size: int, n: int, weights: torch.Tensor | None) -> torch.Tensor:
        """Uniform draws without weights (the same draws as before weighting existed)."""
        if weights is None:
            return torch.randint(0, size, (n,), generator=self.gen)
        if len(weights) != size:
            raise ValueError(f"{len(weights)} weights for {size} rows")
        return torch.multinomial(weights, n, replacement=True, generator=self.gen)


def create_optimizer(
    model: torch.nn.Module,
    cfg: TrainParams,
    lr: float,
    layer_decay: float | None,
    extra: torch.nn.Module | None = None,
    weight_decay: float | None = None,
):
    """timm optimiser over timm's parameter groups (frozen parameters are skipped by timm)."""
    from timm.optim import create_optimizer_v2, param_groups_layer_decay, param_groups_weight_decay

    wd = cfg.weight_decay if weight_decay is None else weight_decay
    no_wd = getattr(model, "no_weight_decay", lambda: set())()
    if layer_decay is not None:
        groups = param_groups_layer_decay(
            model, weight_decay=wd, layer_decay=layer_decay, no_weight_decay_list=no_wd
        )
    else:
        groups = param_groups_weight_decay(model, weight_decay=wd, no_weight_decay_list=no_wd)
    if extra is not None:
        groups += param_groups_weight_decay(extra, weight_decay=wd)
    return create_optimizer_v2(groups, opt=cfg.optimizer, lr=lr, weight_decay=wd)


def _trainable(model: torch.nn.Module, extra: torch.nn.Module | None) -> torch.nn.Module:
    return torch.nn.ModuleDict({"model": model, **({"extra": extra} if extra else {})})


def _train_epoch(model, objective, optimizer, scheduler, train, cfg, ctx, epoch, steps) -> dict:
    inputs, labels = train
    model.train()
    # a streamed dataset brings its own epoch order (shuffled within windows of row groups)
    order = getattr(inputs, "epoch_order", None)
    batches = epoch_batches(len(labels), steps, cfg.batch_size, ctx.gen, order)
    # summed on the device and read once per epoch: a .item() per step would make the host
    # wait for the GPU at every step
    sums = torch.zeros(3, dtype=torch.float64, device=ctx.device)  # target CE, objective, hits
    seen = 0
    cuda = ctx.device.type == "cuda"
    for step, idx in enumerate(batches):
        x = random_shift(inputs[idx], cfg.augment_shift, ctx.gen).to(ctx.device)
        if cuda:
            x = x.contiguous(memory_format=torch.channels_last)
        y = labels[idx].to(ctx.device)
        ctx.progress = (epoch * steps + step) / max(1, ctx.total_steps - 1)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda):
            loss, logits = objective.loss(model, x, y, ctx)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step_update(num_updates=epoch * steps + step + 1)
        # train_loss is the target cross-entropy for every strategy, so they compare; the
        # objective (with domain, penalty or second-task terms) is reported beside it
        with torch.no_grad():
            target_ce = F.cross_entropy(logits.float(), y)
            hits = (logits.argmax(1) == y).sum()
            n = len(idx)
            sums += torch.stack((target_ce.double() * n, loss.double() * n, hits.double()))
        seen += n
    scheduler.step(epoch + 1)
    total_loss, total_objective, correct = sums.tolist()
    return {
        "train_loss": total_loss / seen,
        "train_accuracy": correct / seen,
        "objective_loss": total_objective / seen,
        "lr": max(g["lr"] for g in optimizer.param_groups),
    }


def _setup(model, objective, cfg: TrainParams, lr, layer_decay, device, images: int):
    """Modules on the device, timm's optimiser and per-step scheduler, steps per epoch."""
    from timm.scheduler import create_scheduler_v2

    extra = objective.extra_modules()
    modules = _trainable(model, extra).to(device)
    if device.type == "cuda":
        modules.to(memory_format=torch.channels_last)
    wd = None if objective.weight_decay_groups() else 0.0
    optimizer = create_optimizer(model, cfg, lr or cfg.lr, layer_decay, extra, weight_decay=wd)
    steps = steps_per_epoch(cfg, images)
    scheduler, _ = create_scheduler_v2(
        optimizer,
        sched=cfg.scheduler,
        num_epochs=cfg.epochs,
        warmup_epochs=cfg.warmup_epochs,
        step_on_epochs=False,
        updates_per_epoch=steps,
    )
    return modules, optimizer, scheduler, steps


def _resume(state_dir: Path, modules, optimizer, scheduler, gen, history: History, steps: int):
    """Continue after the last complete epoch saved in ``state_dir`` (none: from the start);
    returns (the first epoch to run, the best weights so far or None)."""
    start, best = load_state(state_dir, modules, optimizer, gen, history)
    if start:  # the schedule is a pure function of the step count
        scheduler.step(start)
        scheduler.step_update(num_updates=start * steps)
    return start, best


def _report(
    bar,
    label: str | None,
    epoch: int,
    epochs: int,
    metrics: dict[str, float],
    score: str = "val_accuracy",
) -> None:
    """One line per epoch: to the log (the Prefect run page, a console that is not a
    terminal) and, on a terminal, to the bar. The metrics are already on the host;
    ``score`` names the accuracy shown beside the loss (``knn_accuracy`` for SSL)."""
    if label is None:
        return
    val = metrics.get(score)
    name = score.removesuffix("_accuracy")
    shown = "" if val is None or math.isnan(val) else f", {name} accuracy {val:.4f}"
    short = "" if val is None or math.isnan(val) else f", {name} acc {val:.3f}"  # fits the bar
    bar.set_postfix_str(f"loss {metrics['train_loss']:.3f}{short}", refresh=False)
    line = f"{label}: epoch {epoch + 1}/{epochs}, loss {metrics['train_loss']:.4f}{shown}"
    log.info("%s", line, extra=EPOCH_RECORD)


# fit is 64 lines, 38 of them its signature, docstring and the loop's set-up in one place:
# the epoch loop itself is the short part, and splitting it would scatter one loop's state.
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
    objective: Objective | None = None,
    state_dir: Path | None = None,
    patience: int | None = None,
    progress: str | None = None,
) -> History:
    """Train ``model`` in place on preprocessed (inputs, labels); return per-epoch metrics.

    With ``patience`` and a non-empty ``val``, training stops after ``patience`` epochs
    without a better validation accuracy and the best epoch's weights are restored;
    otherwise it runs ``cfg.epochs`` epochs of ``steps_per_epoch`` steps. ``progress`` names
    the run in the per-epoch log lines and the bar; without it training is silent.
    """
    from tqdm.auto import tqdm

    if len(train[1]) == 0:
        raise ValueError("training set is empty")
    objective = objective or Objective()
    gen = seed_everything(seed)
    device = device or torch.device("cpu")
    modules, optimizer, scheduler, steps = _setup(
        model, objective, cfg, lr, layer_decay, device, len(train[1])
    )
    history, start, best = History(), 0, None
    if state_dir is not None:
        start, best = _resume(state_dir, modules, optimizer, scheduler, gen, history, steps)
    early = patience is not None and val is not None and len(val[1]) > 0
    ctx = StepContext(gen, 0.0, device, cfg.augment_shift, cfg.epochs * steps)
    # disable=None: a bar only on a terminal; elsewhere the log lines of _report
    off = True if progress is None else None
    bar = tqdm(range(start, cfg.epochs), desc=progress, unit="epoch", disable=off)
    for epoch in bar:
        if early and _patience_spent(history, patience):
            history.stopped_early = True
            break
        metrics = _train_epoch(
            model, objective, optimizer, scheduler, train, cfg, ctx, epoch, steps
        )
        if val is not None and len(val[1]):
            metrics["val_accuracy"] = accuracy(model, *val)
        _refuse_divergence(model, metrics, progress, epoch)
        history.epochs.append(metrics)
        if early and _improved(history, metrics["val_accuracy"]):
            history.best_epoch = epoch
            best = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        _report(bar, progress, epoch, cfg.epochs, metrics)
        if state_dir is not None:
            save_state(state_dir, epoch, modules, optimizer, gen, history, best)
        if on_epoch is not None:
            on_epoch(epoch, metrics)
    if early and best is not None:
        model.load_state_dict(best)
    if state_dir is not None:
        shutil.rmtree(state_dir, ignore_errors=True)
    return history


class TrainingDiverged(RuntimeError):
    """The loss or the weights became NaN or infinite: nothing of this run is saved."""


def _refuse_divergence(model, metrics: dict[str, float], progress: str | None, epoch: int) -> None:
    """Stop at the first epoch whose loss or weights are not finite, before its resume state
    or any checkpoint is written: garbage must not be saved, evaluated or registered."""
    from tasks.modeling.models import first_non_finite

    what = progress or "training"
    losses = {k: metrics[k] for k in ("train_loss", "objective_loss")}
    bad = next((k for k, v in losses.items() if not math.isfinite(v)), None)
    if bad is None:
        tensor = first_non_finite(model.state_dict().items())
        if tensor is None:
            return
        problem = f"weight {tensor} became NaN or infinite"
    else:
        problem = f"{bad} is {losses[bad]}"
    raise TrainingDiverged(
        f"{what}: training diverged in epoch {epoch + 1} ({problem}); nothing was saved: "
        "lower the learning rate, or check preprocess.mean/std and the data"
    )


def _improved(history: History, val_accuracy: float) -> bool:
    """A tie counts as better: with a decaying LR, the later of two equal epochs generalises
    better, and val accuracy on a few images ties often."""
    if history.best_epoch is None:
        return True
    return val_accuracy >= history.epochs[history.best_epoch]["val_accuracy"]


def _patience_spent(history: History, patience: int) -> bool:
    return (
        history.best_epoch is not None and len(history.epochs) - 1 - history.best_epoch >= patience
    )
