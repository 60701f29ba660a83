"""What a reviewer reads on the MLflow run pages: the pipeline run's description and params,
and the per-strategy numbers under one set of metric names."""

from __future__ import annotations

import pytest

from tasks.core.tracking import flat_params, run_description
from tasks.stages.evaluate import candidates_table, strategy_metrics

METRICS = {
    "best": "full",
    "selected_on": "val_accuracy",
    "candidates": {
        "scratch": {
            "accuracy": 0.5,
            "accuracy_ci": [0.35, 0.65],
            "macro_f1": 0.45,
            "ece": 0.1,
            "n": 40,
            "val_accuracy": 0.55,
            "val_n": 20,
        },
        "full": {
            "accuracy": 0.9,
            "accuracy_ci": [0.77, 0.96],
            "macro_f1": 0.89,
            "ece": 0.05,
            "n": 40,
            "val_accuracy": 0.95,
            "val_n": 20,
        },
    },
    "transfer_gain": {"full": 0.4},
    "negative_transfer": {"full": {"gain": 0.4, "threshold": 0.2, "negative": False}},
    "forgetting": {"candidates": {"full": {"forgetting": 0.02, "probe_accuracy": 0.9}}},
}


def test_every_strategy_logs_the_same_metric_names():
    scratch, full = (strategy_metrics(n, METRICS) for n in ("scratch", "full"))
    shared = {"test_accuracy", "val_accuracy", "macro_f1", "ece", "test_n", "test_accuracy_ci_low"}
    assert shared <= set(scratch) and shared <= set(full)
    assert full["transfer_gain"] == 0.4 and full["negative_transfer"] == 0.0
    assert full["forgetting"] == 0.02 and "transfer_gain" not in scratch
    table = candidates_table(METRICS)
    assert table["strategy"] == ["scratch", "full"] and table["registered"] == [False, True]
    assert table["transfer_gain"] == [None, 0.4]  # one row per strategy, gaps where none


def test_params_flattened_within_mlflow_limits():
    flat = flat_params({"a": {"b": 1, "c": [1, 2], "d": None, "e": "x" * 900}, "f": True})
    assert flat == {"a.b": "1", "a.c": "[1, 2]", "a.d": "null", "a.e": "x" * 500, "f": "true"}


def summary(promotion=None, flags=None) -> dict:
    return {
        "model_name": "tlp-uci-digits",
        "version": "4",
        "registered_strategy": "full",
        "selected_on": "val_accuracy",
        "candidates": METRICS["candidates"],
        "negative_transfer": flags or METRICS["negative_transfer"],
        "promotion": promotion,
        "prefect_flow_run_name": "savvy-bloodhound",
    }


def test_description_says_version_accuracy_and_the_gate():
    refused = {
        "promoted": False,
        "gate": {"n": 40},
        "champion_before": "3",
        "reason": "gain +0.0100 is not significant",
    }
    text = run_description(summary(refused), "http://127.0.0.1:4200/runs/flow-run/x")
    assert "Registered **tlp-uci-digits version 4** (`full`" in text
    assert "test accuracy 0.9000 (95% CI 0.770-0.960) on 40 test images" in text
    assert "validation accuracy 0.9500 on 20" in text
    assert "kept out; @champion stays version 3: gain +0.0100 is not significant" in text
    assert "Negative transfer: none flagged." in text
    assert "[savvy-bloodhound](http://127.0.0.1:4200/runs/flow-run/x)" in text


@pytest.mark.parametrize("url", [None, "none"])
def test_description_without_a_prefect_ui_has_no_link(url):
    flags = {"dann": {"gain": -0.2, "threshold": 0.1, "negative": True}}
    text = run_description(summary({"promoted": True, "reason": "ok", "gate": {}}, flags), url)
    assert "Prefect" not in text and "promoted to @champion: ok" in text
    assert "Negative transfer: dann fell below scratch" in text
