"""Training objectives beyond plain cross-entropy: domain adaptation (DANN, MMD), L2-SP and
multi-task learning. Each is a ``training.Objective``; the shared loop optimises and
checkpoints their extra modules together with the model.

DANN and MMD see three streams per step: the labelled target batch, a labelled source batch
(when source and target share classes) and a batch of unlabelled target train images; the
domain term aligns the source and target feature distributions. With instance weights
(tasks/modeling/weighting.py) their source images, and MultiTask's, are drawn in proportion
to the weights instead of uniformly.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from tasks.modeling.batches import features_and_logits
from tasks.modeling.training import Objective, StepContext


class _GradReverse(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, scale: float) -> torch.Tensor:
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return -ctx.scale * grad, None


def grad_reverse(x: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """Identity forward, gradient times ``-scale`` backward (Ganin & Lempitsky 2015)."""
    return _GradReverse.apply(x, scale)


def dann_schedule(progress: float) -> float:
    """Ganin et al.'s ramp 2 / (1 + exp(-10 p)) - 1: the domain term fades in."""
    return 2.0 / (1.0 + math.exp(-10.0 * progress)) - 1.0


def mk_mmd(a: torch.Tensor, b: torch.Tensor, kernels: int = 5, mul: float = 2.0) -> torch.Tensor:
    """Multi-kernel MMD^2 (Gaussian kernels around the mean pairwise distance; Long et al. 2015).

    The biased V-statistic; bandwidths are ``mul``-spaced around the batch's mean squared
    distance (detached), so the kernel family follows the features' scale.
    """
    x = torch.cat([a, b]).float()
    d2 = torch.cdist(x, x).pow(2)
    n = len(x)
    base = d2.detach().sum() / max(1, n * n - n)
    widths = [base * mul ** (i - kernels // 2) for i in range(kernels)]
    k = sum(torch.exp(-d2 / w.clamp_min(1e-8)) for w in widths)
    na = len(a)
    return k[:na, :na].mean() + k[na:, na:].mean() - 2 * k[:na, na:].mean()


class _Streams(Objective):
    """Shared by the objectives that draw extra batches each step."""

    def __init__(
        self,
        source: tuple[torch.Tensor, torch.Tensor] | None,
        target_unlabeled: torch.Tensor | None,
        weight: float,
        source_weights: torch.Tensor | None = None,
    ) -> None:
        self.source = source
        self.target_unlabeled = target_unlabeled
        self.weight = weight
        # instance weights of the source images (tasks/modeling/weighting.py): both the
        # labelled-source term and the domain term draw source images in proportion to them
        self.source_weights = source_weights

    def _domain_features(self, model, n: int, ctx: StepContext) -> torch.Tensor:
        """Features of ``n`` source then ``n`` unlabelled target images, in one forward pass."""
        xs = ctx.sample(self.source_domain, n, self.source_weights)
        xt = ctx.sample(self.target_unlabeled, n)
        return features_and_logits(model, torch.cat([xs, xt]))[0]

    def _classify(self, model, x, y, ctx: StepContext):
        """Cross-entropy on target (and source when it shares the classes), with features."""
        n = len(x)
        xs = ys = None
        if self.source is not None:
            xs, ys = ctx.sample_labelled(*self.source, n, self.source_weights)
        batch = x if xs is None else torch.cat([x, xs])
        feats, logits = features_and_logits(model, batch)
        loss = F.cross_entropy(logits[:n], y)
        if ys is not None:
            loss = loss + F.cross_entropy(logits[n:], ys)
        return loss, feats, logits[:n]


class DANN(_Streams):
    """Domain-adversarial training: a discriminator on features behind gradient reversal."""

    def __init__(
        self,
        num_features: int,
        source,
        target_unlabeled,
        source_domain,
        weight: float,
        source_weights: torch.Tensor | None = None,
    ):
        super().__init__(source, target_unlabeled, weight, source_weights)
        self.source_domain = source_domain  # source images for the domain term
        hidden = max(64, num_features // 2)
        self.discriminator = torch.nn.Sequential(
            torch.nn.Linear(num_features, hidden),
            torch.nn.ReLU(),
            torch.nn.Linear(hidden, 1),
        )

    def extra_modules(self) -> torch.nn.Module:
        return self.discriminator

    def loss(self, model, x, y, ctx: StepContext):
        cls_loss, _, logits = self._classify(model, x, y, ctx)
        n = len(x)
        feats = self._domain_features(model, n, ctx)
        scale = dann_schedule(ctx.progress)
        domain_logits = self.discriminator(grad_reverse(feats, scale)).squeeze(1)
        domain = torch.cat([torch.zeros(n), torch.ones(n)]).to(domain_logits.device)
        dom_loss = F.binary_cross_entropy_with_logits(domain_logits.float(), domain)
        return cls_loss + self.weight * dom_loss, logits


class MMD(_Streams):
    """Deep adaptation network style: multi-kernel MMD between source and target features."""

    def __init__(
        self,
        source,
        target_unlabeled,
        source_domain,
        weight: float,
        source_weights: torch.Tensor | None = None,
    ):
        super().__init__(source, target_unlabeled, weight, source_weights)
        self.source_domain = source_domain

    def loss(self, model, x, y, ctx: StepContext):
        cls_loss, _, logits = self._classify(model, x, y, ctx)
        n = len(x)
        feats = self._domain_features(model, n, ctx)
        return cls_loss + self.weight * mk_mmd(feats[:n], feats[n:]), logits


class L2SP(Objective):
    """Cross-entropy + alpha/2 ||w - w_source||^2 on shared weights + beta/2 ||w||^2 on new ones
    (Li et al. 2018); the optimiser's own weight decay is turned off so it does not pull the
    shared weights toward zero instead."""

    def __init__(
        self, model: torch.nn.Module, alpha: float, beta: float, new_names: set[str]
    ) -> None:
        self.alpha, self.beta = alpha, beta
        self.anchor = {
            name: p.detach().clone()
            for name, p in model.named_parameters()
            if name not in new_names
        }

    def weight_decay_groups(self) -> bool:
        return False

    def penalty(self, model: torch.nn.Module) -> torch.Tensor:
        shared, new = 0.0, 0.0
        for name, p in model.named_parameters():
            if name in self.anchor:
                shared = shared + (p - self.anchor[name].to(p.device)).pow(2).sum()
            else:
                new = new + p.pow(2).sum()
        return 0.5 * self.alpha * shared + 0.5 * self.beta * new

    def loss(self, model, x, y, ctx: StepContext):
        logits = model(x)
        return F.cross_entropy(logits, y) + self.penalty(model), logits


class MultiTask(Objective):
    """One shared backbone, one head per task: target digits (the model's own head) and the
    source task (a second head), trained jointly; the target head is what gets registered."""

    def __init__(
        self,
        num_features: int,
        source: tuple[torch.Tensor, torch.Tensor],
        n_source: int,
        weight: float,
        source_head: torch.nn.Module | None = None,
        source_weights: torch.Tensor | None = None,
    ) -> None:
        self.source = source
        self.weight = weight
        self.source_weights = source_weights  # source batch drawn in proportion to them
        self.head = source_head or torch.nn.Linear(num_features, n_source)

    def extra_modules(self) -> torch.nn.Module:
        return self.head

    def loss(self, model, x, y, ctx: StepContext):
        n = len(x)
        xs, ys = ctx.sample_labelled(*self.source, n, self.source_weights)
        feats, logits = features_and_logits(model, torch.cat([x, xs]))
        target_loss = F.cross_entropy(logits[:n], y)
        source_loss = F.cross_entropy(self.head(feats[n:]), ys)
        return target_loss + self.weight * source_loss, logits[:n]
