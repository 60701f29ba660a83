import numpy as np
import pytest
import torch

from tasks.evaluation.metrics import (
    classification_metrics,
    expected_calibration_error,
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
