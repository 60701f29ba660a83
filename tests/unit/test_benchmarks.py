"""The benchmark helpers that shape the reported figures: merging grids run apart, the
report built from result files, the overhead split."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from benchmarks import report
from benchmarks.data_efficiency import combined_runs
from benchmarks.orchestration import overhead


def _run(labels, seed: int, accuracy: float, experiment: str = "default") -> dict:
    return {
        "experiment": experiment,
        "labels_per_class": labels,
        "seed": seed,
        "candidates": {"scratch": {"accuracy": accuracy}},
    }


def test_combined_runs_merge_files_and_keep_the_later_duplicate(tmp_path):
    strategies = tmp_path / "transfer_strategies.json"
    strategies.write_text(
        json.dumps({"runs": [_run(1, 0, 0.1), _run(10, 0, 0.2), _run(1, 0, 0.9, "mnist-m")]})
    )
    efficiency = tmp_path / "data_efficiency.json"
    efficiency.write_text(json.dumps({"runs": [_run("all", 0, 0.3), _run("10", 0, 0.4)]}))

    runs = combined_runs([strategies, efficiency], "default")

    assert [(r["labels_per_class"], r["candidates"]["scratch"]["accuracy"]) for r in runs] == [
        ("1", 0.1),
        ("10", 0.4),  # the later file wins
        ("all", 0.3),
    ]


def test_combined_runs_name_a_missing_experiment(tmp_path):
    path = tmp_path / "r.json"
    path.write_text(json.dumps({"runs": [_run(1, 0, 0.1)]}))
    with pytest.raises(SystemExit, match="mnist-m"):
        combined_runs([path], "mnist-m")


def test_overhead_is_wall_time_outside_the_stages():
    summary = {
        "wall_seconds": 90.0,
        "stage_compute_seconds": {"prepare": 10.0, "pretrain": 70.0},
        "orchestration_seconds": {"dvc_commit": 4.0, "promotion_gate": 1.0},
        "process_seconds_before_flow": 6.0,
    }
    split = overhead(100.0, summary)
    parts = split["split"]
    assert parts["before_flow"] == 6.0 and parts["dvc"] == 4.0 and parts["after_flow"] == 4.0
    assert sum(parts.values()) == pytest.approx(split["overhead_seconds"])
    assert split["goal"] == {"max_percent": 5.0, "passed": False}
    assert split["overhead_seconds"] == pytest.approx(20.0)
    assert split["overhead_percent"] == pytest.approx(20.0)
    assert split["outside_flow_seconds"] == pytest.approx(10.0)
    assert split["orchestration_inside_flow"] == {"dvc_commit": 4.0, "promotion_gate": 1.0}


def test_report_covers_every_committed_result(tmp_path, project_root):
    results = tmp_path / "results"
    shutil.copytree(project_root / "benchmarks" / "results", results)
    text, metrics = report.build(results)
    for name in report.SECTIONS:
        assert f"## {name}" not in text  # "## name" is the heading of a missing result
    assert "throughput_ratio" in metrics
    assert (results / "orchestration.png").is_file()


def test_serving_reads_both_answer_shapes_of_the_onnx_server():
    from benchmarks.serving import first_logits

    assert first_logits({"logits": [[0.1, 0.9]]}) == [0.1, 0.9]
    assert first_logits([{"logits": [0.1, 0.9]}]) == [0.1, 0.9]
    assert first_logits([[0.1, 0.9]]) == [0.1, 0.9]


def test_unlabelled_source_avoids_the_target_and_gains_are_paired_by_seed():
    from benchmarks.unlabelled import disjoint_subsample, summarise
    from tasks.data.splits import subsample

    labels = np.repeat(np.arange(4), 50)
    target = subsample(labels, 80, split_seed=0)
    source = disjoint_subsample(labels, target, 40, seed=0)
    assert not set(source) & set(target)
    assert np.bincount(labels[source]).tolist() == [10, 10, 10, 10]
    assert source.tolist() == disjoint_subsample(labels, target, 40, seed=0).tolist()

    def run(arm, seed, accuracies, selected):
        candidates = {n: {"accuracy": a} for n, a in accuracies.items()}
        return {
            "experiment": "digits",
            "labels_per_class": 10,
            "seed": seed,
            "arm": arm,
            "candidates": candidates,
            "selected": selected,
            "pretrain": None,
            "instance_weights": None,
        }

    runs = [
        run("none", 0, {"scratch": 0.5}, "scratch"),
        run("none", 1, {"scratch": 0.7}, "scratch"),
        run("supervised", 0, {"linear_probe": 0.8, "full": 0.9}, "full"),
        run("supervised", 1, {"linear_probe": 0.8, "full": 0.6}, "linear_probe"),
        run("simclr", 0, {"linear_probe": 0.6, "full": 0.7}, "full"),
        run("simclr", 1, {"linear_probe": 0.9, "full": 0.8}, "linear_probe"),
    ]
    simclr = summarise(runs)["digits"]["10"]["simclr"]
    # seed 0: 0.7 - 0.5, seed 1: 0.9 - 0.7 -> +0.2 both times (unpaired spread would not be 0)
    assert simclr["selected"]["gain"]["mean"] == pytest.approx(0.2)
    assert simclr["selected"]["gain"]["std"] == pytest.approx(0.0)
    # against the supervised arm's own pick (0.9, 0.8), and strategy by strategy for full
    assert simclr["selected"]["to_supervised"]["mean"] == pytest.approx(-0.05)
    assert simclr["full"]["to_supervised"]["mean"] == pytest.approx(0.0)
    assert simclr["picked"] == ["full", "linear_probe"]
