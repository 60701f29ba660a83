"""The transferability scores against answers computed independently: closed forms, counts,
direct formulas, and invariances the papers' definitions imply."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import multivariate_normal

from tasks.transferability import scores as ranking


def _blobs(n_per_class=20, k=3, d=5, sep=3.0, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(k, d)) * sep
    labels = np.repeat(np.arange(k), n_per_class)
    return centres[labels] + rng.normal(size=(len(labels), d)), labels


def _brute_evidence(f, y, alpha, beta):
    """log N(y | 0, beta^-1 I + alpha^-1 F F') / N: the marginal likelihood in closed form."""
    n = len(y)
    cov = np.eye(n) / beta + f @ f.T / alpha
    return multivariate_normal(mean=np.zeros(n), cov=cov).logpdf(y) / n


def test_logme_evidence_is_the_gaussian_marginal_likelihood_at_its_maximum():
    rng = np.random.default_rng(1)
    f = rng.normal(size=(30, 4))
    y = f @ rng.normal(size=4) * 0.5 + rng.normal(size=30) * 0.3
    ev = ranking.logme_evidence(f, y)
    assert ev.evidence == pytest.approx(_brute_evidence(f, y, ev.alpha, ev.beta), rel=1e-9)
    # the fixed point maximises the evidence: every nearby (alpha, beta) is no better
    for da in (0.8, 1.0, 1.25):
        for db in (0.8, 1.0, 1.25):
            assert _brute_evidence(f, y, ev.alpha * da, ev.beta * db) <= ev.evidence + 1e-9


def test_logme_with_more_dimensions_than_images_reaches_the_noise_free_limit():
    rng = np.random.default_rng(1)
    f = rng.normal(size=(12, 20))
    y = f @ rng.normal(size=20) * 0.5 + rng.normal(size=12) * 0.3
    ev = ranking.logme_evidence(f, y)
    # F interpolates y: beta -> infinity, the evidence -> log N(y | 0, alpha^-1 F F') / N
    limit = multivariate_normal(np.zeros(12), f @ f.T / ev.alpha).logpdf(y) / 12
    assert ev.beta > 1e4 * ev.alpha
    assert ev.evidence == pytest.approx(limit, rel=1e-6)
    for da in (0.8, 1.25):  # and alpha is still the best alpha there
        worse = multivariate_normal(np.zeros(12), f @ f.T / (ev.alpha * da)).logpdf(y) / 12
        assert worse <= ev.evidence + 1e-9


def test_logme_fixed_point_equations_hold():
    f, labels = _blobs()
    y = (labels == 1).astype(float)
    ev = ranking.logme_evidence(f, y)
    s = np.linalg.eigvalsh(f.T @ f)
    a = ev.alpha * np.eye(f.shape[1]) + ev.beta * f.T @ f
    m = ev.beta * np.linalg.solve(a, f.T @ y)
    gamma = (ev.beta * s / (ev.alpha + ev.beta * s)).sum()
    assert ev.alpha == pytest.approx(gamma / (m @ m), rel=1e-4)
    assert ev.beta == pytest.approx((len(y) - gamma) / ((y - f @ m) ** 2).sum(), rel=1e-4)


def test_logme_is_the_mean_over_one_hot_columns_and_label_permutation_invariant():
    f, labels = _blobs()
    direct = np.mean([ranking.logme_evidence(f, (labels == c) * 1.0).evidence for c in range(3)])
    assert ranking.logme(f, labels) == pytest.approx(direct)
    permuted = np.array([2, 0, 1])[labels]
    assert ranking.logme(f, permuted) == pytest.approx(ranking.logme(f, labels))
    rotation = np.linalg.qr(np.random.default_rng(3).normal(size=(5, 5)))[0]
    assert ranking.logme(f @ rotation, labels) == pytest.approx(ranking.logme(f, labels))


def test_logme_prefers_features_that_separate_the_classes():
    f, labels = _blobs()
    noise = np.random.default_rng(5).normal(size=f.shape)
    assert ranking.logme(f, labels) > ranking.logme(noise, labels)


def test_logme_stays_finite_when_the_features_interpolate():
    rng = np.random.default_rng(4)
    labels = np.repeat(np.arange(3), 6)
    for strength in (0.0, 8.0, 64.0):  # D = 50 > N = 18: beta grows without bound
        f = rng.normal(size=(18, 50)) + np.eye(3, 50)[labels] * strength
        assert np.isfinite(ranking.logme(f, labels))


def test_leep_on_a_hand_computed_joint():
    theta = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]])
    labels = np.array([0, 1, 0])
    # joint P(y, z) = (1/3) * sum of theta rows per label
    joint = np.array([[0.9 + 0.6, 0.1 + 0.4], [0.2, 0.8]]) / 3
    cond = joint / joint.sum(0)
    expected = np.mean(
        [
            np.log(0.9 * cond[0, 0] + 0.1 * cond[0, 1]),
            np.log(0.2 * cond[1, 0] + 0.8 * cond[1, 1]),
            np.log(0.6 * cond[0, 0] + 0.4 * cond[0, 1]),
        ]
    )
    assert ranking.leep(theta, labels) == pytest.approx(expected)
    assert ranking.leep(theta, np.array([1, 0, 1])) == pytest.approx(expected)  # relabelled


def test_leep_is_zero_for_a_source_head_that_already_predicts_the_target():
    labels = np.array([0, 1, 2, 1, 0])
    assert ranking.leep(np.eye(3)[labels], labels) == pytest.approx(0.0)
    assert ranking.leep(np.full((5, 4), 0.25), labels) == pytest.approx(
        np.mean(np.log(np.bincount(labels)[labels] / 5))  # uninformative: log P(y)
    )


def test_nce_is_minus_the_conditional_entropy_from_counts():
    y = np.array([0, 0, 1, 1, 1, 0, 2, 2])
    z = np.array([5, 5, 5, 7, 7, 7, 9, 9])
    # H(Y|Z) = sum_z P(z) H(Y | Z=z): z=5 -> (2/3, 1/3), z=7 -> (1/3, 2/3), z=9 -> pure
    h = lambda ps: -sum(p * np.log(p) for p in ps)  # noqa: E731
    expected = -(3 / 8 * h([2 / 3, 1 / 3]) + 3 / 8 * h([1 / 3, 2 / 3]) + 2 / 8 * 0.0)
    assert ranking.nce(z, y) == pytest.approx(expected)
    assert ranking.nce(z, np.array([2, 1, 0])[y]) == pytest.approx(expected)
    assert ranking.nce(y, y) == pytest.approx(0.0)  # Z determines Y


def test_h_score_matches_the_direct_formula():
    f, labels = _blobs(n_per_class=30)
    cov_f = np.cov(f, rowvar=False, bias=True)
    cond = np.stack([f[labels == c].mean(0) for c in labels])  # E[f | y_i], row per image
    cov_g = np.cov(cond, rowvar=False, bias=True)
    expected = np.trace(np.linalg.inv(cov_f) @ cov_g)
    assert ranking.h_score(f, labels) == pytest.approx(expected)
    assert ranking.h_score(f, np.array([1, 2, 0])[labels]) == pytest.approx(expected)
    assert 0 < expected < 2  # at most K - 1 = 2 (between-class share of the variance)


def test_regularised_h_score_matches_scikit_learn_and_is_not_degenerate():
    from sklearn.covariance import LedoitWolf

    rng = np.random.default_rng(4)
    labels = np.repeat(np.arange(3), 6)
    f = rng.normal(size=(18, 50)) + np.eye(3, 50)[labels] * 2
    # the plain score is K - 1 = 2 for any features in general position when N <= D
    assert ranking.h_score(f, labels) == pytest.approx(2.0, abs=1e-6)
    lw = LedoitWolf().fit(f)
    means = np.stack([f[labels == c].mean(0) for c in labels]) - f.mean(0)
    cov_g = means.T @ means / len(f)
    expected = np.trace(np.linalg.inv(lw.covariance_) @ ((1 - lw.shrinkage_) * cov_g))
    assert ranking.h_score(f, labels, shrinkage=True) == pytest.approx(expected)
    assert ranking.h_score(f, labels, shrinkage=True) != pytest.approx(2.0, abs=1e-3)


def test_compute_scores_without_a_head_leaves_leep_and_nce_out():
    f, labels = _blobs()
    scores = ranking.compute_scores(f, labels, None)
    assert list(scores) == list(ranking.SCORES)
    assert scores["leep"] is None and scores["nce"] is None and scores["logme"] is not None
    with_head = ranking.compute_scores(f, labels, f[:, :4])
    assert with_head["leep"] < 0 and with_head["nce"] <= 0


def test_rows_rank_best_first_and_unscored_last():
    from tasks.transferability.sources import slug
    from tasks.transferability.tables import rank_rows, ranking_text

    rows = [
        {"candidate": "a", "logme": 0.1, "leep": None, "nce": None, "h_score": 1.0, "note": "x"},
        {"candidate": "b", "logme": 0.3, "leep": -1.0, "nce": -0.5, "h_score": 2.0, "note": ""},
        {"candidate": "c", "logme": -0.2, "leep": -0.1, "nce": -0.2, "h_score": 0.5, "note": ""},
    ]
    assert [r["candidate"] for r in rank_rows(rows, "logme")] == ["b", "a", "c"]
    by_leep = rank_rows(rows, "leep")
    assert [(r["candidate"], r["rank"]) for r in by_leep] == [("c", 1), ("b", 2), ("a", None)]
    assert "* ranked by leep" in ranking_text(by_leep, "leep")
    assert slug("../ckpt/a.b@c") == "ckpt_a_b_c"
