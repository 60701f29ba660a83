"""Instance-based transfer: weights on the source images by how target-like they look.

Training on source and target together (``multitask``, ``dann``, ``mmd``) assumes the source
images are as useful as each other. Under covariate shift the right weight of a source image
is the density ratio p_target(x) / p_source(x) (Shimodaira 2000): importance weighting makes
the source loss an unbiased estimate of the loss on the target's distribution. Estimating the
two densities in feature space is hopeless; a probabilistic classifier that tells source from
target gives the ratio directly, p(target|x) / p(source|x) * n_source / n_target (Bickel et
al. 2007, discriminative learning under covariate shift). Here that classifier is scikit-learn's
logistic regression on the source model's frozen pooled features, L2-normalised: images are
compared by the direction of their features, as the kNN monitor and retrieval do. Standardising
each feature instead lets near-constant features, scaled up to unit variance, tell the domains
apart by noise: on mnist5k + Fashion-MNIST into UCI digits the standardised classifier gave the
unrelated Fashion half 24% of the weight, the normalised one 1.4%.

Cross-fitting: each image's weight comes from a classifier fitted on the other folds, never
on the image itself. A classifier scoring its own training images is overconfident, and the
ratio p/(1-p) turns that overconfidence into a few huge weights.

Clipping: the ratio is unbounded where the source has little mass, and a handful of large
weights would make the source batches a few images repeated (a tiny effective sample size).
Weights are normalised to mean 1 and capped at ``clip`` times the mean; the scale is then
solved so that the mean stays exactly 1 under the cap. The Kish effective sample size
(sum w)^2 / sum w^2 says how many equally weighted images the weighted source is worth.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np

HISTOGRAM_BINS = 20
MAX_FOLDS = 5
# p(target|x) is kept inside [EPS, 1 - EPS] so that no ratio is zero or infinite
EPS = 1e-6


@dataclass(frozen=True)
class InstanceWeights:
    """One weight per source image (mean 1, at most ``clip``) and how to read them."""

    weights: np.ndarray  # float64, one per source image, mean 1
    clip: float
    clipped: int  # weights held at the cap
    domain_auc: float  # cross-fitted ROC AUC of source vs target: 0.5 = indistinguishable
    histogram: dict[str, list[float]]  # "edges" (bins + 1) and "counts" on [0, clip]
    by_class: dict[str, dict[str, float]] = field(default_factory=dict)

    @property
    def ess(self) -> float:
        """Kish's effective sample size: (sum w)^2 / sum w^2."""
        return kish_ess(self.weights)

    @property
    def ess_fraction(self) -> float:
        return self.ess / len(self.weights)

    def summary(self) -> dict:
        """The weights in a JSON-able dict (for reports and MLflow), without the weights."""
        return {
            "method": "domain_classifier",
            "images": len(self.weights),
            "ess": self.ess,
            "ess_fraction": self.ess_fraction,
            "clip": self.clip,
            "clipped": self.clipped,
            "min_weight": float(self.weights.min()),
            "max_weight": float(self.weights.max()),
            "domain_auc": self.domain_auc,
            "histogram": self.histogram,
            "by_class": self.by_class,
        }


def kish_ess(weights: np.ndarray) -> float:
    return float(weights.sum() ** 2 / np.square(weights).sum())


def density_ratio_weights(
    source_features,
    target_features,
    clip: float,
    seed: int,
    source_labels=None,
    source_classes: tuple[str, ...] | None = None,
) -> InstanceWeights:
    """Weights of the source images (rows of ``source_features``) toward the target's
    distribution (rows of ``target_features``): a cross-fitted domain classifier's density
    ratio, normalised to mean 1 and capped at ``clip``. With ``source_labels`` and
    ``source_classes``, ``by_class`` shows where the weight went."""
    xs, xt = _as_array(source_features), _as_array(target_features)
    if min(len(xs), len(xt)) < 2:
        raise ValueError(
            "transfer.instance_weighting: the domain classifier needs at least 2 source and "
            f"2 target images (got {len(xs)} and {len(xt)})"
        )
    p_target = cross_fitted_target_probability(xs, xt, seed)
    ratio = _odds(p_target[: len(xs)]) * len(xs) / len(xt)
    weights, clipped = clip_weights(ratio, clip)
    return InstanceWeights(
        weights=weights,
        clip=clip,
        clipped=clipped,
        domain_auc=_domain_auc(len(xs), len(xt), p_target),
        histogram=_histogram(weights, clip),
        by_class=_by_class(weights, source_labels, source_classes),
    )


def cross_fitted_target_probability(xs: np.ndarray, xt: np.ndarray, seed: int) -> np.ndarray:
    """p(target|x) for every source then every target row, each from a classifier fitted on
    the folds that do not hold that row (stratified by domain, seeded)."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import Normalizer
    from threadpoolctl import threadpool_limits

    x = np.concatenate([xs, xt])
    domain = np.concatenate([np.zeros(len(xs), int), np.ones(len(xt), int)])
    folds = StratifiedKFold(min(MAX_FOLDS, len(xs), len(xt)), shuffle=True, random_state=seed)
    classifier = make_pipeline(Normalizer(), LogisticRegression(max_iter=500))
    # one BLAS thread, as the linear probe (tasks/modeling/features.py): a small problem that
    # more threads only slow down on a busy machine; an unconverged fit is still a classifier
    with warnings.catch_warnings(), threadpool_limits(1):
        warnings.simplefilter("ignore", ConvergenceWarning)
        proba = cross_val_predict(classifier, x, domain, cv=folds, method="predict_proba")
    return np.clip(proba[:, 1], EPS, 1.0 - EPS)


def clip_weights(ratio: np.ndarray, clip: float) -> tuple[np.ndarray, int]:
    """``ratio`` scaled to mean 1 with no weight above ``clip`` (>= 1), and how many sit at
    the cap. Capping then rescaling would lift weights over the cap again, so the scale is
    solved with the capped set fixed, growing that set until no other weight crosses it."""
    ratio = np.asarray(ratio, dtype=np.float64)
    n = len(ratio)
    capped = np.zeros(n, dtype=bool)
    while True:
        free = ratio[~capped].sum()
        scale = (n - clip * capped.sum()) / free if free > 0 else 0.0
        over = ~capped & (ratio * scale > clip)
        if not over.any():
            break
        capped |= over
    weights = np.where(capped, clip, ratio * scale)
    return weights, int(capped.sum())


def _as_array(features) -> np.ndarray:
    values = features.numpy() if hasattr(features, "numpy") else features
    return np.asarray(values, dtype=np.float64).reshape(len(values), -1)


def _odds(p: np.ndarray) -> np.ndarray:
    return p / (1.0 - p)


def _domain_auc(n_source: int, n_target: int, p_target: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    domain = np.concatenate([np.zeros(n_source), np.ones(n_target)])
    return float(roc_auc_score(domain, p_target))


def _histogram(weights: np.ndarray, clip: float) -> dict[str, list[float]]:
    counts, edges = np.histogram(weights, bins=HISTOGRAM_BINS, range=(0.0, clip))
    return {"edges": edges.tolist(), "counts": counts.tolist()}


def _by_class(weights: np.ndarray, labels, classes) -> dict[str, dict[str, float]]:
    """Per source class: its images, their mean weight and its share of the total weight."""
    if labels is None or classes is None:
        return {}
    labels = np.asarray(labels.numpy() if hasattr(labels, "numpy") else labels)
    total = weights.sum()
    out = {}
    for index, name in enumerate(classes):
        mine = weights[labels == index]
        if len(mine):
            out[name] = {
                "images": int(len(mine)),
                "mean_weight": float(mine.mean()),
                "weight_share": float(mine.sum() / total),
            }
    return out
