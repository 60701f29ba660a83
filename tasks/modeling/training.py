"""One training loop, shared by pretraining and every fine-tuning strategy.

Inputs are preprocessed once into tensors (the datasets are small images), so an epoch is
pure compute. Optimiser and schedule come from timm: ``create_optimizer_v2`` gets timm's
parameter groups (with layer-wise LR decay when asked) and timm's scheduler applies each
group's ``lr_scale``. What a strategy adds to the plain cross-entropy (a domain
discriminator, an MMD term, a penalty toward the source weights, a second head) is an
``Objective``: its extra modules are optimised and checkpointed with the model.

Resumable: with ``state_dir`` set, every epoch ends with a checkpoint (safetensors weights, a
``torch.load(weights_only=True)``-safe file for optimiser and RNG state, and JSON history);
a rerun after a crash continues from the last complete epoch and, on CPU, ends with exactly
the metrics of an uninterrupted run. The directory is removed once training finishes.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from tasks.core.params import TrainParams

EpochCallback = Callable[[int, dict[str, float]], None]
LATEST = "latest.json"


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


def features_and_logits(model: torch.nn.Module, x: torch.Tensor):
    """Pooled pre-logit features and logits of a timm model in one forward pass."""
    pooled = model.forward_head(model.forward_features(x), pre_logits=True)
    return pooled, model.get_classifier()(pooled)


@torch.no_grad()
def map_batches(
    model: torch.nn.Module, fn, inputs: torch.Tensor, batch_size: int = 512
) -> torch.Tensor:
    """``fn(model, batch)`` over ``inputs`` in eval mode, batched, results back on the CPU."""
    model.eval()
    device = next(model.parameters()).device
    outs = [
        fn(model, inputs[i : i + batch_size].to(device)).float().cpu()
        for i in range(0, len(inputs), batch_size)
    ]
    return torch.cat(outs) if outs else torch.empty(0)


def predict_logits(
    model: torch.nn.Module, inputs: torch.Tensor, batch_size: int = 512
) -> torch.Tensor:
    return map_batches(model, lambda m, x: m(x), inputs, batch_size)


def accuracy(model: torch.nn.Module, inputs: torch.Tensor, labels: torch.Tensor) -> float:
    if len(labels) == 0:
        return math.nan
    return (predict_logits(model, inputs).argmax(1) == labels).float().mean().item()


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

    def sample(self, inputs: torch.Tensor, n: int) -> torch.Tensor:
        """``n`` random augmented rows of ``inputs`` on the device (seeded)."""
        idx = torch.randint(0, len(inputs), (n,), generator=self.gen)
        return random_shift(inputs[idx], self.augment_shift, self.gen).to(self.device)

    def sample_labelled(self, inputs: torch.Tensor, labels: torch.Tensor, n: int):
        idx = torch.randint(0, len(inputs), (n,), generator=self.gen)
        x = random_shift(inputs[idx], self.augment_shift, self.gen).to(self.device)
        return x, labels[idx].to(self.device)


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


def _save_state(state_dir: Path, epoch: int, modules, optimizer, gen, history, best) -> None:
    """Write epoch ``epoch``'s checkpoint to its own folder, then point ``latest.json`` at it."""
    from safetensors.torch import save_file

    folder = state_dir / f"epoch-{epoch:04d}"
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in modules.state_dict().items()}
    save_file(tensors, str(folder / "weights.safetensors"))
    if best is not None:
        save_file(best, str(folder / "best.safetensors"))
    torch.save(
        {
            "optimizer": optimizer.state_dict(),
            "gen": gen.get_state(),
            "torch": torch.get_rng_state(),
        },
        folder / "state.pt",
    )
    meta = {
        "epoch": epoch,
        "folder": folder.name,
        "epochs": history.epochs,
        "best_epoch": history.best_epoch,
        "has_best": best is not None,
    }
    tmp = state_dir / (LATEST + ".tmp")
    tmp.write_text(json.dumps(meta))
    os.replace(tmp, state_dir / LATEST)  # atomic: a kill leaves the previous epoch in place
    for old in state_dir.glob("epoch-*"):
        if old.name != folder.name:
            shutil.rmtree(old, ignore_errors=True)


def _load_state(state_dir: Path, modules, optimizer, gen, history) -> tuple[int, dict | None]:
    """Restore the last complete epoch; returns (epochs done, best weights or None)."""
    from safetensors.torch import load_file

    latest = state_dir / LATEST
    if not latest.is_file():
        return 0, None
    meta = json.loads(latest.read_text())
    folder = state_dir / meta["folder"]
    modules.load_state_dict(load_file(str(folder / "weights.safetensors")))
    state = torch.load(folder / "state.pt", weights_only=True)
    optimizer.load_state_dict(state["optimizer"])
    gen.set_state(state["gen"])
    torch.set_rng_state(state["torch"])
    history.epochs = meta["epochs"]
    history.best_epoch = meta["best_epoch"]
    best = load_file(str(folder / "best.safetensors")) if meta["has_best"] else None
    return meta["epoch"] + 1, best


def steps_per_epoch(cfg: TrainParams, images: int) -> int:
    """One pass over the images, or more steps when ``cfg.epochs`` passes would be fewer than
    ``cfg.min_steps``: with one label per class a pass is a single step."""
    return max(math.ceil(images / cfg.batch_size), math.ceil(cfg.min_steps / cfg.epochs))


def epoch_batches(images: int, steps: int, batch_size: int, gen: torch.Generator):
    """Index batches of one epoch: a seeded permutation cut into ``batch_size`` slices, and
    further permutations after it when the epoch takes more steps than one pass gives."""
    size = min(batch_size, images)
    one_pass = math.ceil(images / size)
    passes = 1 if steps <= one_pass else math.ceil(steps * size / images)
    order = torch.cat([torch.randperm(images, generator=gen) for _ in range(passes)])
    return [order[i * size : (i + 1) * size] for i in range(steps)]


def _train_epoch(model, objective, optimizer, scheduler, train, cfg, ctx, epoch, steps) -> dict:
    inputs, labels = train
    model.train()
    batches = epoch_batches(len(labels), steps, cfg.batch_size, ctx.gen)
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
    otherwise it runs ``cfg.epochs`` epochs of ``steps_per_epoch`` steps.
    """
    from timm.scheduler import create_scheduler_v2
    from tqdm.auto import tqdm

    inputs, labels = train
    if len(labels) == 0:
        raise ValueError("training set is empty")
    objective = objective or Objective()
    gen = seed_everything(seed)
    device = device or torch.device("cpu")
    extra = objective.extra_modules()
    modules = _trainable(model, extra).to(device)
    if device.type == "cuda":
        modules.to(memory_format=torch.channels_last)
    wd = None if objective.weight_decay_groups() else 0.0
    optimizer = create_optimizer(model, cfg, lr or cfg.lr, layer_decay, extra, weight_decay=wd)
    steps = steps_per_epoch(cfg, len(labels))
    scheduler, _ = create_scheduler_v2(
        optimizer,
        sched=cfg.scheduler,
        num_epochs=cfg.epochs,
        warmup_epochs=cfg.warmup_epochs,
        step_on_epochs=False,
        updates_per_epoch=steps,
    )
    history = History()
    start, best = (0, None)
    if state_dir is not None:
        start, best = _load_state(state_dir, modules, optimizer, gen, history)
        if start:  # the schedule is a pure function of the step count
            scheduler.step(start)
            scheduler.step_update(num_updates=start * steps)
    early = patience is not None and val is not None and len(val[1]) > 0
    ctx = StepContext(gen, 0.0, device, cfg.augment_shift, cfg.epochs * steps)
    bar = tqdm(range(start, cfg.epochs), desc=progress or "train", unit="epoch", disable=None)
    for epoch in bar:
        if early and _patience_spent(history, patience):
            history.stopped_early = True
            break
        metrics = _train_epoch(
            model, objective, optimizer, scheduler, train, cfg, ctx, epoch, steps
        )
        if val is not None and len(val[1]):
            metrics["val_accuracy"] = accuracy(model, *val)
        history.epochs.append(metrics)
        if early and _improved(history, metrics["val_accuracy"]):
            history.best_epoch = epoch
            best = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        bar.set_postfix(loss=f"{metrics['train_loss']:.3f}")
        if state_dir is not None:
            _save_state(state_dir, epoch, modules, optimizer, gen, history, best)
        if on_epoch is not None:
            on_epoch(epoch, metrics)
    if early and best is not None:
        model.load_state_dict(best)
    if state_dir is not None:
        shutil.rmtree(state_dir, ignore_errors=True)
    return history


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
