import numpy as np
import pytest
import torch

from tasks.evaluation.metrics import (
    accuracy_interval,
    calibration_error,
    classification_metrics,
    expected_calibration_error,
    reliability_bins,
    select_best,
    transfer_gain,
)


def test_ece_zero_when_confidence_matches_accuracy():
    probs = np.array([[1.0, 0.0], [0.0, 1.0]])
    assert expected_calibration_error(probs, np.array([0, 1])) == pytest.approx(0.0)


def test_ece_one_when_confidently_wrong():
    probs = np.array([[1.0, 0.0], [0.0, 1.0]])
    assert expected_calibration_error(probs, np.array([1, 0])) == pytest.approx(1.0)


def test_ece_of_a_known_mixture():
    # all at confidence 0.8, half right: |0.5 - 0.8| = 0.3
    probs = np.array([[0.8, 0.2]] * 4)
    assert expected_calibration_error(probs, np.array([0, 0, 1, 1])) == pytest.approx(0.3)


def test_classification_metrics_on_a_known_case():
    logits = torch.tensor([[5.0, 0, 0], [0, 5.0, 0], [0, 5.0, 0], [0, 0, 5.0]])
    m = classification_metrics(logits, np.array([0, 1, 2, 2]), num_classes=3)
    assert m["accuracy"] == pytest.approx(0.75)
    assert m["confusion_matrix"] == [[1, 0, 0], [0, 1, 0], [0, 1, 1]]
    # per-class F1: 1, 2/3, 2/3
    assert m["macro_f1"] == pytest.approx((1 + 2 / 3 + 2 / 3) / 3)


def test_transfer_gain_and_selection():
    assert transfer_gain({"scratch": 0.6, "full": 0.9}) == {"full": pytest.approx(0.3)}
    assert transfer_gain({"full": 0.9}) == {}
    assert select_best({"scratch": 0.9, "full": 0.9}, ["scratch", "full"]) == "scratch"
    assert select_best({"scratch": 0.5, "full": 0.9}, ["scratch", "full"]) == "full"


def test_wilson_interval_of_known_cases():
    low, high = accuracy_interval(8, 10)  # textbook: 0.490-0.943
    assert low == pytest.approx(0.4902, abs=1e-4) and high == pytest.approx(0.9433, abs=1e-4)
    assert accuracy_interval(40, 40)[1] == pytest.approx(1.0)  # stays inside [0, 1]
    assert 0.0 < accuracy_interval(40, 40)[0] < 1.0
    assert all(np.isnan(accuracy_interval(0, 0)))
    narrow, wide = accuracy_interval(450, 500), accuracy_interval(36, 40)
    assert narrow[1] - narrow[0] < wide[1] - wide[0]  # more test images, a tighter interval


def test_reliability_bins_hold_the_diagram_and_give_the_ece():
    probs = np.array([[0.8, 0.2]] * 4 + [[0.05, 0.95]] * 2)
    labels = np.array([0, 0, 1, 1, 1, 1])
    bins = reliability_bins(probs, labels, bins=10)
    assert [(b["bin_lower"], b["bin_upper"], b["count"]) for b in bins] == [
        (pytest.approx(0.7), pytest.approx(0.8), 4),
        (pytest.approx(0.9), pytest.approx(1.0), 2),
    ]
    assert bins[0]["confidence"] == pytest.approx(0.8) and bins[0]["accuracy"] == 0.5
    assert bins[1]["confidence"] == pytest.approx(0.95) and bins[1]["accuracy"] == 1.0
    # ECE = 4/6 * |0.5 - 0.8| + 2/6 * |1.0 - 0.95|
    expected = 4 / 6 * 0.3 + 2 / 6 * 0.05
    assert calibration_error(bins) == pytest.approx(expected)
    assert expected_calibration_error(probs, labels, 10) == pytest.approx(expected)


def test_classification_metrics_carry_the_interval_and_bins():
    logits = torch.tensor([[5.0, 0, 0], [0, 5.0, 0], [0, 5.0, 0], [0, 0, 5.0]])
    m = classification_metrics(logits, np.array([0, 1, 2, 2]), num_classes=3)
    assert m["accuracy_ci"] == pytest.approx(accuracy_interval(3, 4))
    assert sum(b["count"] for b in m["reliability"]) == 4
    assert m["ece"] == pytest.approx(calibration_error(m["reliability"]))
