"""What DVC's views read (tasks/evaluation/views.py): one small score file per candidate for
`dvc metrics show`, and record lists for the plots declared in dvc.yaml."""

from __future__ import annotations

import json

from tasks.core.context import Layout
from tasks.evaluation.views import confusion_records, score_row, write_views

METRICS = {
    "best": "full",
    "selected_on": "val_accuracy",
    "candidates": {
        "scratch": {"accuracy": 0.5, "val_accuracy": 0.4, "macro_f1": 0.45, "ece": 0.2, "n": 4},
        "full": {
            "accuracy": 0.75,
            "val_accuracy": 0.8,
            "macro_f1": 0.7,
            "ece": 0.123456,
            "n": 4,
            "val_n": 5,
        },
    },
    "transfer_gain": {"full": 0.25},
    "negative_transfer": {"full": {"gain": 0.25, "threshold": 0.7, "negative": False}},
    "forgetting": {"candidates": {"full": {"probe_accuracy": 0.9, "forgetting": 0.05}}},
}
CONFUSION = {"scratch": [[1, 1], [1, 1]], "full": [[2, 0], [1, 1]]}


def test_a_score_row_is_a_few_rounded_numbers():
    assert score_row("full", METRICS) == {
        "test_acc": 0.75,
        "val_acc": 0.8,
        "macro_f1": 0.7,
        "ece": 0.1235,
        "gain": 0.25,
        "forgetting": 0.05,
    }
    assert "gain" not in score_row("scratch", METRICS)  # the baseline has no gain over itself


def test_confusion_records_count_each_test_image_once():
    records = confusion_records(CONFUSION["full"], ("cat", "dog"))
    assert len(records) == 4
    assert records.count({"actual": "cat", "predicted": "cat"}) == 2
    assert records.count({"actual": "dog", "predicted": "cat"}) == 1


def test_write_views_replaces_what_an_earlier_run_left(tmp_path):
    layout = Layout(tmp_path)
    stale = tmp_path / "reports" / "scores" / "dropped_strategy.json"
    stale.parent.mkdir(parents=True)
    stale.write_text("{}")
    bins = [
        {"bin_lower": 0.0, "bin_upper": 0.5, "confidence": 0.4, "accuracy": 0.5, "count": 2},
        {"bin_lower": 0.5, "bin_upper": 1.0, "confidence": 0.0, "accuracy": 0.0, "count": 0},
    ]
    write_views(layout, METRICS, CONFUSION, ("cat", "dog"), calibration={"full": bins})
    assert sorted(p.name for p in layout.scores.iterdir()) == ["full.json", "scratch.json"]
    plots = {p.name: json.loads(p.read_text()) for p in layout.plots.iterdir()}
    assert set(plots) == {"confusion.json", "accuracy.json", "reliability.json"}
    assert plots["accuracy.json"][1] == {
        "candidate": "full",
        "test_accuracy": 0.75,
        "val_accuracy": 0.8,
    }
    assert plots["reliability.json"] == bins[:1]  # empty bins are not points
    write_views(layout, METRICS, CONFUSION, ("cat", "dog"))  # no calibration: no diagram
    assert not (layout.plots / "reliability.json").exists()
