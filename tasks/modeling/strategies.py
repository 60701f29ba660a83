"""Stage ``transfer``: every strategy in ``transfer.strategies`` trained on the labelled target.

- ``scratch``: same architecture from random weights, the baseline that makes gain measurable.
- ``source_only``: the source model as it is (needs the same classes): what transfer starts from.
- ``linear_probe``: frozen source backbone; cached features + scikit-learn logistic regression.
- ``partial``: the first ``freeze_stages`` layer groups frozen (timm group_matcher + freeze).
- ``full``: every layer fine-tuned with layer-wise LR decay (timm optimiser + scheduler).
- ``lp_ft``: linear probe, then full fine-tuning from that head (Kumar et al. 2022).
- ``l2sp``: full fine-tuning with an L2 pull toward the source weights (Li et al. 2018).
- ``dann`` / ``mmd``: fine-tuning plus unsupervised domain alignment with the unlabelled
  target train images (gradient reversal + discriminator; multi-kernel MMD).
- ``multitask``: shared backbone, a target head and a source head trained jointly.

With ``transfer.instance_weighting: domain_classifier`` the strategies that train on source
images (dann, mmd, multitask) draw them in proportion to instance weights computed once per
stage (``instance_weights``; tasks/modeling/weighting.py): how target-like each looks.

Each strategy trains with the shared loop in ``tasks.modeling.training`` and is saved as an ordinary
timm checkpoint, so evaluation and serving do not care how it was made.
"""

from __future__ import annotations

import copy
import hashlib
import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import torch
import torch.nn.functional as F

from tasks.core import tracking
from tasks.core.context import WORK_DIR, StageContext
from tasks.data.loading import load_source_tensors
from tasks.modeling.models import (
    create_model,
    freeze_stages,
    load_checkpoint,
    resolve_device,
    unfreeze_modules,
)
from tasks.modeling.training import History, Objective, fit
from tasks.modeling.weighting import InstanceWeights

# the strategies that learn from the unlabelled target pool (domain adaptation)
USES_UNLABELED = frozenset({"dann", "mmd"})


@dataclass
class Job:
    """One strategy's inputs: the stage context and the target splits (source loaded lazily)."""

    ctx: StageContext
    name: str
    train: tuple[torch.Tensor, torch.Tensor]
    val: tuple[torch.Tensor, torch.Tensor]
    unlabeled: torch.Tensor  # every target train image, labels unused
    classes: tuple[str, ...]
    # the source images' weights, shared by the source-using strategies of one stage
    instance_weights: InstanceWeights | None = None
    # called after each epoch's metrics are logged, e.g. a search trial's pruning check
    # (tasks/modeling/search.py), which may stop the training by raising
    on_epoch: Callable[[int, dict[str, float]], None] | None = None

    @property
    def params(self):
        return self.ctx.params

    @cached_property
    def source(self) -> tuple[torch.Tensor, torch.Tensor, tuple[str, ...]]:
        p = self.params
        return load_source_tensors(self.ctx.layout.source_data, "train", p)

    def with_params(self, params, **changes) -> Job:
        """This job under other params (a search trial, the tuned candidate), keeping the
        source images already loaded (the cached ``source``) instead of reading them again."""
        import dataclasses

        job = dataclasses.replace(self, ctx=dataclasses.replace(self.ctx, params=params), **changes)
        if "source" in self.__dict__:
            job.__dict__["source"] = self.__dict__["source"]
        return job

    def data_read(self) -> dict[str, tuple[str, ...]]:
        """The splits this strategy read (its run's datasets): the labelled target splits,
        the unlabelled pool for domain adaptation, the source train split once loaded."""
        pool = ("unlabeled",) if self.name in USES_UNLABELED else ()
        uses = {"target": ("train", "val", *pool)}
        if "source" in self.__dict__:  # the cached property holds it once a strategy read it
            uses["source"] = ("train",)
        return uses

    @property
    def feature_cache(self) -> Path:
        return self.ctx.project_dir / WORK_DIR / "features"

    def state_dir(self) -> Path | None:
        """Resume folder keyed on everything that shapes the run (params, data, strategy)."""
        if not self.params.transfer.resume:
            return None
        key = hashlib.sha256(
            f"{self.name}|{self.params.digest()}".encode()
            + self.train[0].numpy().tobytes()
            + self.train[1].numpy().tobytes()
        ).hexdigest()[:16]
        return self.ctx.project_dir / WORK_DIR / "resume" / f"transfer-{self.name}-{key}"


def _source_model(job: Job, keep_head: bool = True) -> torch.nn.Module:
    """The source checkpoint, with a fresh target-sized head unless the classes match."""
    p = job.params
    model, card = load_checkpoint(job.ctx.layout.source_model)
    if not (keep_head and p.transfer.keep_head and card.classes == job.classes):
        torch.manual_seed(p.base.seed)
        model.reset_classifier(len(job.classes))  # timm: a fresh head sized for the target
    return model


def instance_weights(job: Job) -> InstanceWeights:
    """Weights of the source train images toward the target (train + unlabelled pool), from
    the source model's frozen pooled features (pre-logits: a self-supervised source has no
    classifier), cached like the linear probe's."""
    from tasks.modeling.features import cached_features
    from tasks.modeling.weighting import density_ratio_weights

    p = job.params
    model, _ = load_checkpoint(job.ctx.layout.source_model)
    model = model.to(resolve_device(p.base.device))
    xs, ys, source_classes = job.source
    source = cached_features(model, xs, job.feature_cache).to("cpu")
    target = cached_features(model, job.unlabeled, job.feature_cache).to("cpu")
    labels = ys if source_classes else None
    return density_ratio_weights(
        source, target, p.transfer.weight_clip, p.base.seed, labels, source_classes
    )


def _source_weights(job: Job) -> torch.Tensor | None:
    """The instance weights as the sampling weights of ``StepContext.sample`` (or None)."""
    if job.instance_weights is None:
        return None
    return torch.from_numpy(job.instance_weights.weights)


def _fit(job: Job, model, lr: float, layer_decay=None, objective: Objective | None = None):
    p = job.params
    # early stopping needs enough labels: with a handful of images an epoch is one or two
    # steps, and val accuracy (BatchNorm statistics included) is too noisy to stop on
    enough = (
        len(job.val[1]) >= p.transfer.min_val_for_early_stopping
        and len(job.train[1]) >= p.transfer.min_train_for_early_stopping
    )
    return fit(
        model,
        job.train,
        p.transfer,
        seed=p.base.seed,
        lr=lr,
        layer_decay=layer_decay,
        val=job.val,
        on_epoch=lambda epoch, m: _epoch_done(job, epoch, m),
        device=resolve_device(p.base.device),
        objective=objective,
        state_dir=job.state_dir(),
        patience=p.transfer.patience if enough else None,
        progress=f"transfer/{job.name}",
    )


def _epoch_done(job: Job, epoch: int, metrics: dict[str, float]) -> None:
    tracking.log_epoch(metrics, epoch)
    if job.on_epoch is not None:
        job.on_epoch(epoch, metrics)


def _scratch(job: Job):
    p = job.params
    model = create_model(p.model.arch, len(job.classes), p.preprocess.channels, seed=p.base.seed)
    return model, _fit(job, model, lr=p.transfer.scratch_lr)


def _source_only(job: Job):
    """The source model as it is. A target whose classes are a subset of the source's (by
    name) keeps the matching rows of the source head, in the target's order."""
    from tasks.modeling.features import set_head

    model, card = load_checkpoint(job.ctx.layout.source_model)
    if card.classes == job.classes:
        return model, History()
    missing = [c for c in job.classes if c not in card.classes]
    if missing:
        raise ValueError(
            "transfer.strategies: source_only needs every target class among the source "
            f"model's classes; missing: {', '.join(missing)}"
        )
    rows = [card.classes.index(c) for c in job.classes]
    head = model.get_classifier()
    set_head(model, head.weight.detach()[rows].clone(), head.bias.detach()[rows].clone())
    return model.eval(), History()


def _linear_probe(job: Job):
    """Fit the head on cached frozen features; the 'loss' is the head's before and after."""
    from tasks.modeling.features import cached_features, fit_probe, set_head

    p = job.params
    model = _source_model(job).to(resolve_device(p.base.device))
    feats = cached_features(model, job.train[0], job.feature_cache).to("cpu")
    model.cpu()
    before = F.cross_entropy(model.get_classifier()(feats), job.train[1]).item()
    weight, bias = fit_probe(feats, job.train[1], len(job.classes), p.transfer.probe_c, p.base.seed)
    set_head(model, weight, bias)
    with torch.no_grad():
        logits = model.get_classifier()(feats)
    after = F.cross_entropy(logits, job.train[1]).item()
    accuracy = (logits.argmax(1) == job.train[1]).float().mean().item()
    history = History(
        [
            {"train_loss": before},
            {"train_loss": after, "train_accuracy": accuracy},
        ]
    )
    return model, history


def _partial(job: Job):
    p = job.params
    model = _source_model(job)
    frozen = freeze_stages(model, p.transfer.freeze_stages)
    history = _fit(job, model, lr=p.transfer.lr)
    unfreeze_modules(model, frozen)  # plain BatchNorm again, so the checkpoint loads anywhere
    return model, history


def _full(job: Job):
    p = job.params
    model = _source_model(job)
    return model, _fit(job, model, lr=p.transfer.lr, layer_decay=p.transfer.layer_decay)


def _lp_ft(job: Job):
    p = job.params
    model, probe = _linear_probe(job)
    history = _fit(job, model, lr=p.transfer.lr, layer_decay=p.transfer.layer_decay)
    history.epochs.insert(0, probe.epochs[0])  # the loss before the probe, for comparison
    return model, history


def _l2sp(job: Job):
    from tasks.modeling.objectives import L2SP

    p = job.params
    model = _source_model(job)
    head_ids = {id(q) for q in model.get_classifier().parameters()}
    kept_head = load_checkpoint(job.ctx.layout.source_model)[1].classes == job.classes
    new = set() if (kept_head and p.transfer.keep_head) else head_ids
    new_names = {n for n, q in model.named_parameters() if id(q) in new}
    objective = L2SP(model, p.transfer.l2sp_alpha, p.transfer.l2sp_beta, new_names)
    return model, _fit(job, model, lr=p.transfer.lr, objective=objective)


def _adapt(job: Job, kind: str):
    from tasks.modeling.objectives import DANN, MMD

    p = job.params
    model = _source_model(job)
    xs, ys, source_classes = job.source
    labelled_source = (xs, ys) if source_classes == job.classes else None
    w = p.transfer.adapt_weight
    weights = _source_weights(job)
    if kind == "dann":
        objective = DANN(model.num_features, labelled_source, job.unlabeled, xs, w, weights)
    else:
        objective = MMD(labelled_source, job.unlabeled, xs, w, weights)
    return model, _fit(job, model, lr=p.transfer.lr, objective=objective)


def source_task_head(source: torch.nn.Module, card) -> torch.nn.Module | None:
    """The source model's classifier, copied, for multitask's source task; None (a new head)
    for a self-supervised source, which has no classifier (card classes ``()``)."""
    return copy.deepcopy(source.get_classifier()) if card.classes else None


def _multitask(job: Job):
    from tasks.modeling.objectives import MultiTask

    p = job.params
    source_head = source_task_head(*load_checkpoint(job.ctx.layout.source_model))
    model = _source_model(job)
    xs, ys, source_classes = job.source
    objective = MultiTask(
        model.num_features,
        (xs, ys),
        len(source_classes),
        p.transfer.multitask_weight,
        source_head,
        _source_weights(job),
    )
    return model, _fit(job, model, lr=p.transfer.lr, objective=objective)


STRATEGIES: dict[str, Callable[[Job], tuple[torch.nn.Module, History]]] = {
    "scratch": _scratch,
    "source_only": _source_only,
    "linear_probe": _linear_probe,
    "partial": _partial,
    "full": _full,
    "lp_ft": _lp_ft,
    "l2sp": _l2sp,
    "dann": lambda job: _adapt(job, "dann"),
    "mmd": lambda job: _adapt(job, "mmd"),
    "multitask": _multitask,
}


def history_summary(history: History, train_images: int) -> dict:
    nan = math.nan
    first = history.epochs[0] if history.epochs else {}
    return {
        "first_train_loss": first.get("train_loss", nan),
        "final_train_loss": history.final.get("train_loss", nan),
        "val_accuracy": history.final.get("val_accuracy", nan),
        "epochs_run": len(history.epochs),
        "best_epoch": -1 if history.best_epoch is None else history.best_epoch,
        "stopped_early": history.stopped_early,
        "train_images": train_images,
    }
