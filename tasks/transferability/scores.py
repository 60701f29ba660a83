"""Transferability scores: how well a source model should transfer to a labelled target,
estimated from one forward pass over the target's train split, without fine-tuning.

- ``logme``: log marginal evidence of a Bayesian linear model on the features
  (You et al. 2021, "LogME: Practical Assessment of Pre-trained Models for Transfer Learning").
- ``leep``: log expected empirical prediction through the source head's soft labels
  (Nguyen et al. 2020, "LEEP: A New Measure to Evaluate Transferability of Learned
  Representations").
- ``nce``: negative conditional entropy of target labels given the source head's hard labels
  (Tran et al. 2019, "Transferability and Hardness of Supervised Classification Tasks").
- ``h_score``: tr(cov(f)^-1 cov(E[f|y])), how much of the feature variance the classes explain
  (Bao et al. 2019, "An Information-Theoretic Approach to Transferability in Task Transfer
  Learning"); optionally with Ledoit-Wolf shrinkage of cov(f) (Ibrahim et al. 2022), which
  keeps it meaningful when there are fewer images than feature dimensions.

Higher is better for every score. Inputs are arrays, outputs floats; the shrinkage is
scikit-learn's ``ledoit_wolf`` and the softmax scipy's, imported when a score needs them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SCORES = ("logme", "leep", "nce", "h_score")
NEEDS_HEAD = ("leep", "nce")  # computed from the source classifier's predictions


@dataclass(frozen=True)
class Evidence:
    """LogME's result for one target column: evidence per sample and the fitted precisions."""

    evidence: float  # log p(y | F, alpha, beta) / N
    alpha: float  # prior precision of the weights
    beta: float  # noise precision
    iterations: int


def _labels(labels: np.ndarray) -> tuple[np.ndarray, int]:
    """Labels as 0..K-1 codes (any integer or string labels), and K."""
    _, codes = np.unique(np.asarray(labels), return_inverse=True)
    return codes.reshape(-1), int(codes.max()) + 1 if codes.size else 0


def logme_evidence(
    features: np.ndarray, target: np.ndarray, max_iter: int = 100, tol: float = 1e-6
) -> Evidence:
    """LogME for one real-valued target column ``target`` (N,) given ``features`` (N, D).

    Model: y = F w + e, w ~ N(0, alpha^-1 I), e ~ N(0, beta^-1 I). alpha and beta maximise the
    evidence by MacKay's fixed point (You et al. 2021, Algorithm 1):
    gamma = sum(beta s_i / (alpha + beta s_i)), alpha = gamma / m'm,
    beta = (N - gamma) / ||y - F m||^2, with s_i the eigenvalues of F'F and m the posterior
    mean. The evidence is then (Bishop 2006, eq. 3.86)
    D/2 ln alpha + N/2 ln beta - beta/2 ||y - Fm||^2 - alpha/2 m'm - 1/2 ln|A| - N/2 ln 2pi,
    A = alpha I + beta F'F, returned divided by N.

    With D >= N the features can interpolate y: the fixed point drives beta up without bound
    while the evidence tends to a finite limit (that of y ~ N(0, alpha^-1 F F')); the residual
    is floored at 1e-12 ||y||^2 so beta stays finite and the limit is approached.
    """
    f = np.asarray(features, dtype=np.float64)
    y = np.asarray(target, dtype=np.float64)
    n, d = f.shape
    u, sv, _ = np.linalg.svd(f, full_matrices=False)  # F = U S V'; eigenvalues of F'F: S^2
    s = sv**2
    proj = u.T @ y  # coordinates of y in the column space of F
    outside = max(float(y @ y - proj @ proj), 0.0)  # the part of ||y||^2 F cannot fit
    floor = 1e-12 * max(float(y @ y), 1e-300)
    alpha, beta, iteration = 1.0, 1.0, 0
    while iteration < max_iter:
        iteration += 1
        shrink = beta * s / (alpha + beta * s)
        gamma = float(shrink.sum())
        mm = float(((shrink * proj) ** 2 / s.clip(1e-300)).sum())  # m'm
        residual = float(((proj * (1.0 - shrink)) ** 2).sum()) + outside  # ||y - Fm||^2
        new_alpha = gamma / max(mm, 1e-300)
        new_beta = (n - gamma) / max(residual, floor)
        done = abs(new_alpha - alpha) <= tol * alpha and abs(new_beta - beta) <= tol * beta
        alpha, beta = new_alpha, new_beta
        if done:
            break
    shrink = beta * s / (alpha + beta * s)
    mm = float(((shrink * proj) ** 2 / s.clip(1e-300)).sum())
    residual = float(((proj * (1.0 - shrink)) ** 2).sum()) + outside
    # ln|A|: the D - rank directions F does not span have eigenvalue alpha alone
    log_det = float(np.log(alpha + beta * s).sum()) + (d - len(s)) * np.log(alpha)
    evidence = (
        d / 2 * np.log(alpha)
        + n / 2 * np.log(beta)
        - beta / 2 * residual
        - alpha / 2 * mm
        - log_det / 2
        - n / 2 * np.log(2 * np.pi)
    )
    return Evidence(float(evidence) / n, float(alpha), float(beta), iteration)


def logme(features: np.ndarray, labels: np.ndarray) -> float:
    """LogME (You et al. 2021): mean over classes of the per-sample log evidence of a
    Bayesian linear regression from the features to each class's one-hot column."""
    codes, k = _labels(labels)
    return float(
        np.mean(
            [logme_evidence(features, (codes == c).astype(np.float64)).evidence for c in range(k)]
        )
    )


def leep(source_probs: np.ndarray, labels: np.ndarray) -> float:
    """LEEP (Nguyen et al. 2020): (1/N) sum_i log sum_z P(y_i | z) theta(x_i)_z, where
    theta(x) is the source head's softmax over source classes z and P(y | z) comes from the
    empirical joint P(y, z) = (1/N) sum_{i: y_i = y} theta(x_i)_z."""
    theta = np.asarray(source_probs, dtype=np.float64)
    codes, k = _labels(labels)
    n = len(codes)
    joint = np.zeros((k, theta.shape[1]))
    np.add.at(joint, codes, theta / n)
    marginal = joint.sum(0, keepdims=True)  # P(z)
    conditional = np.divide(joint, marginal, out=np.zeros_like(joint), where=marginal > 0)
    eep = (theta * conditional[codes]).sum(1)  # sum_z P(y_i | z) theta(x_i)_z
    return float(np.mean(np.log(eep)))


def nce(source_labels: np.ndarray, labels: np.ndarray) -> float:
    """NCE (Tran et al. 2019): -H(Y | Z) of the empirical joint of target labels Y and the
    source head's hard predictions Z (argmax), in nats."""
    y, k = _labels(labels)
    z, m = _labels(source_labels)
    joint = np.zeros((k, m))
    np.add.at(joint, (y, z), 1.0)
    joint /= joint.sum()
    pz = joint.sum(0, keepdims=True)
    nonzero = joint > 0
    return float((joint[nonzero] * np.log((joint / pz)[nonzero])).sum())


def h_score(features: np.ndarray, labels: np.ndarray, shrinkage: bool = False) -> float:
    """H-score (Bao et al. 2019): tr(cov(f)^-1 cov(E[f | y])), the between-class covariance
    of the features measured in units of their total covariance (pseudo-inverse when
    cov(f) is singular). ``shrinkage`` gives the regularised H-score of Ibrahim et al. 2022,
    tr(cov_a(f)^-1 (1 - a) cov(E[f | y])) with cov_a the Ledoit-Wolf estimate and a its
    intensity: with N <= D the plain score is degenerate (K - 1 for any features in general
    position), the regularised one is not."""
    f = np.asarray(features, dtype=np.float64)
    codes, k = _labels(labels)
    centred = f - f.mean(0)
    if shrinkage:
        from sklearn.covariance import ledoit_wolf  # Ledoit & Wolf 2004, shrunk toward mu I

        cov_f, intensity = ledoit_wolf(centred, assume_centered=True)
    else:
        cov_f, intensity = centred.T @ centred / len(f), 0.0
    class_means = np.zeros((k, f.shape[1]))
    np.add.at(class_means, codes, centred)
    counts = np.bincount(codes, minlength=k).astype(np.float64)
    class_means /= counts[:, None]
    # cov(E[f|y]) = sum_y p(y) mu_y mu_y' (means of centred features), p(y) = count / N
    cov_g = (1.0 - intensity) * (class_means * (counts / len(f))[:, None]).T @ class_means
    return float(np.trace(np.linalg.pinv(cov_f, hermitian=True) @ cov_g))


def compute_scores(
    features: np.ndarray, labels: np.ndarray, logits: np.ndarray | None
) -> dict[str, float | None]:
    """Every score for one source: LEEP and NCE are None without a source head (``logits``)."""
    out: dict[str, float | None] = {
        "logme": logme(features, labels),
        "h_score": h_score(features, labels, shrinkage=True),
        "leep": None,
        "nce": None,
    }
    if logits is not None:
        from scipy.special import softmax

        out["leep"] = leep(softmax(np.asarray(logits, dtype=np.float64), axis=1), labels)
        out["nce"] = nce(np.asarray(logits).argmax(1), labels)
    return {name: out[name] for name in SCORES}
