"""The model card's text from its facts (a pure function): every section, the intervals, the
negative-transfer flags, the gate's decision, the export lines only when there was an export,
and a description that fits what a SQL registry store keeps."""

from __future__ import annotations

import copy

import pytest

from tasks.registry.modelcard import DESCRIPTION_LIMIT, description_markdown, model_card_markdown

SECTIONS = (
    "## Intended use",
    "## Data",
    "## Classes",
    "## Candidates",
    "## Calibration",
    "## Promotion",
    "## Limitations",
    "## How to load it",
)


def _candidate(acc, ci, val, gain=None, negative=False) -> dict:
    return {
        "accuracy": acc,
        "accuracy_ci": ci,
        "macro_f1": acc - 0.01,
        "ece": 0.08,
        "n": 40,
        "val_accuracy": val,
        "val_accuracy_ci": [val - 0.2, min(1.0, val + 0.1)],
        "val_n": 20,
        "gain": gain,
        "threshold": 0.05 if gain is not None else None,
        "negative": negative,
        "forgetting": 0.01,
        "train_images": 100,
        "epochs_run": 5,
    }


def _dataset(name: str, digest: str | None) -> dict:
    return {
        "dataset": f"builtin:{name}",
        "name": name,
        "path": f"data/{'source' if name == 'mnist5k' else 'target'}",
        "dvc_hash": digest,
        "images": 1797,
        "bytes": 220347,
        "splits": {"test": 40, "val": 20, "train": 100},
        "classes": 10,
        "median_size": [8, 8],
        "modes": ["L"],
        "skipped_files": 0,
    }


def card_facts(**changes) -> dict:
    facts = {
        "generated": "2026-01-01T00:00:00+00:00",
        "model": {
            "name": "tlp-uci-digits",
            "version": "7",
            "strategy": "full",
            "arch": "resnet10t",
            "aliases": ["challenger"],
            "register_run_id": "abc123",
            "params_hash": "0123456789abcdef",
            "git_commit": "f" * 40,
            "git_dirty": False,
        },
        "input": "resnet10t (full), 10 classes. Takes raw images and preprocesses them itself.",
        "classes": [str(i) for i in range(10)],
        "data": {
            "source": _dataset("mnist5k", "6ab4e88054702e2e11efaf978746433f.dir"),
            "target": _dataset("uci-digits", None),
        },
        "source_model": {"source": "dataset", "trained": True, "source_test_accuracy": 0.95},
        "validation": {
            "source": {"success": True, "expectations": 29},
            "target": {"success": True, "expectations": 30},
            "domain_shift": {"ks_mean": 0.98},
        },
        "best": "full",
        "selected_on": "val_accuracy",
        "candidates": {
            "scratch": _candidate(0.5, [0.35, 0.65], 0.55),
            "full": _candidate(0.9, [0.77, 0.96], 0.95, gain=0.4),
            "dann": _candidate(0.4, [0.26, 0.55], 0.35, gain=-0.1, negative=True),
        },
        "forgetting": 0.9,
        "calibration": {
            "bins": [
                {
                    "bin_lower": 0.6,
                    "bin_upper": 0.8,
                    "confidence": 0.7,
                    "accuracy": 0.6,
                    "count": 10,
                },
                {
                    "bin_lower": 0.8,
                    "bin_upper": 1.0,
                    "confidence": 0.95,
                    "accuracy": 1.0,
                    "count": 30,
                },
            ],
            "image": None,
        },
        "export": None,
        "promotion": None,
    }
    facts.update(changes)
    return facts


def test_every_section_in_order_with_intervals_and_flags():
    card = model_card_markdown(card_facts())
    positions = [card.index(s) for s in SECTIONS]
    assert positions == sorted(positions)
    assert card.startswith("# Model card: tlp-uci-digits version 7")
    assert "| **full** (registered) | 0.9000 (0.770-0.960) | 0.9500 (0.750-1.000) |" in card
    assert "| dann | 0.4000 (0.260-0.550) |" in card and "NEGATIVE TRANSFER" in card
    assert "dann fell below scratch by more than the margin (gain -0.1000, margin 0.0500)" in card
    assert "`6ab4e88054702e2e11efaf978746433f.dir`" in card  # the source's DVC hash
    assert "| target | `builtin:uci-digits` | `data/target` | not recorded |" in card
    assert "test 40, train 100, val 20" in card and "1,797" in card
    assert "`0`, `1`" in card and "**Out of scope:**" in card
    assert "Small test set: 40 images" in card and "0.770-0.960" in card
    assert "ECE 0.0800" in card and "| 0.80-1.00 | 0.950 | 1.000 | 30 |" in card
    assert 'load_model("models:/tlp-uci-digits/7")' in card and "@challenger" in card
    assert "Takes raw images" in card  # what the version takes: the old description
    assert "Pending at registration" in card


def test_no_export_report_no_export_line_and_a_present_one_rendered():
    assert "ONNX" not in model_card_markdown(card_facts())
    export = {
        "onnx": "models/export/model.onnx",
        "opset": 20,
        "parity": {"n": 539, "max_abs_logit_diff": 3.1e-7, "labels_identical": True, "atol": 1e-4},
        "int8": None,
    }
    card = model_card_markdown(card_facts(export=export))
    assert "ONNX (opset 20, dynamic batch): `onnx/model.onnx`" in card
    assert "onnxruntime against torch on 539 test images" in card and "3.10e-07" in card
    assert "predicted labels identical" in card and "INT8" not in card
    export["int8"] = {"accuracy_change": -0.002, "size_ratio": 0.27, "latency_ratio": 0.6}
    assert "INT8 ONNX: accuracy change -0.0020, size x0.27" in model_card_markdown(
        card_facts(export=export)
    )


def test_the_gate_decision_replaces_pending():
    refused = {
        "promoted": False,
        "forced": False,
        "champion_before": "3",
        "reason": "gain +0.0100 is not significant: McNemar p=0.31 >= alpha 0.05",
        "decided_at": "2026-01-01T00:01:00+00:00",
        "gate": {
            "n": 40,
            "candidate_accuracy": 0.9,
            "champion_accuracy": 0.89,
            "p_value": 0.3125,
            "candidate_only_correct": 4,
            "champion_only_correct": 3,
            "alpha": 0.05,
            "min_delta": 0.0,
            "min_accuracy": 0.5,
        },
    }
    card = model_card_markdown(card_facts(promotion=refused))
    assert "Pending" not in card
    assert "**kept out**: @champion stays version 3" in card and "not significant" in card
    assert "p = 0.3125 (4 vs 3 discordant)" in card
    forced = {**refused, "promoted": True, "forced": True, "asked": {"by": "alice", "reason": "x"}}
    text = model_card_markdown(card_facts(promotion=forced))
    assert "**FORCED past the gate by a person**: now @champion (was version 3)" in text
    assert "Asked for by alice (`tlp promote`): x" in text
    first = {**refused, "promoted": True, "champion_before": None, "gate": None}
    assert "**promoted**: now @champion (the first champion)" in model_card_markdown(
        card_facts(promotion=first)
    )


def test_scratch_registered_and_ties_said_in_limitations():
    facts = card_facts()
    facts["model"]["strategy"] = "scratch"
    facts["candidates"]["full"]["val_accuracy"] = 0.55  # tied with scratch on validation
    card = model_card_markdown(facts)
    assert "the source did not help this target" in card and "Trained from random weights" in card
    assert "tied with full" in card


def test_description_shows_the_diagram_and_fits_the_registry():
    facts = card_facts()
    text = description_markdown(facts, "get-artifact?path=reliability.png&run_uuid=abc123")
    assert "![Reliability diagram](get-artifact?path=reliability.png&run_uuid=abc123)" in text
    big = copy.deepcopy(facts)
    for i in range(12):
        big["candidates"][f"strategy_{i}"] = _candidate(0.5, [0.3, 0.7], 0.5, gain=0.0)
    big["calibration"]["bins"] *= 8
    long = description_markdown(big, "get-artifact?path=reliability.png&run_uuid=abc123")
    assert len(long) <= DESCRIPTION_LIMIT and "cut here" in long
    medium = copy.deepcopy(facts)  # too long with the bins table only: the table goes
    medium["calibration"]["bins"] *= 60
    text = description_markdown(medium, None)
    assert "| confidence bin" not in text and "Mean confidence 0.887" in text
    assert "cut" not in text
    assert len(model_card_markdown(big)) > DESCRIPTION_LIMIT  # the artifact keeps it whole


@pytest.mark.parametrize("digest", [None, "x.dir"])
def test_rendering_takes_what_json_gives_back(digest):
    """The gate renders the facts read back from the register run's JSON artifact."""
    import json

    facts = card_facts()
    facts["data"]["target"]["dvc_hash"] = digest
    assert model_card_markdown(json.loads(json.dumps(facts))) == model_card_markdown(facts)


def test_a_source_never_prepared_here_is_named_not_failed():
    """A register stage without data/source (a checkpoint source, or the stage run alone)
    still gets its card: the source row says it was not prepared here."""
    unprepared = {"dataset": "builtin:mnist5k", "path": "data/source", "prepared": False}
    facts = card_facts()
    facts["data"]["source"] = unprepared
    card = model_card_markdown(facts)
    assert "| source | `builtin:mnist5k` | `data/source` | not prepared here |" in card
    assert "| target | `builtin:uci-digits` |" in card


def test_a_searched_candidate_says_how_its_values_were_chosen():
    assert "search" not in model_card_markdown(card_facts())  # trained with the values as given
    facts = card_facts()
    facts["candidates"]["full"]["search"] = {
        "best_params": {"lr": 0.00123456, "layer_decay": 0.8},
        "best_value": 0.95,
        "default_value": 0.9,
        "complete": 10,
        "pruned": 1,
        "failed": 1,
    }
    card = model_card_markdown(facts)
    assert (
        "chosen by a search of 12 trials on the validation split: `lr` 0.001235, `layer_decay` "
        "0.8 (val accuracy 0.9500, against 0.9000 with the values as given)." in card
    )
