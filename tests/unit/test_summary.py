"""``tlp run``'s closing lines say what happened, not only reports/metrics.json: the gate's
decision and reason, where @champion stands and which URI loads this run's model (never
@champion for a refused candidate), each candidate's test and validation accuracy with the
split sizes, a tie and how it was broken, negative transfer, and a registered scratch
baseline meaning the source did not help. Summaries saved by older versions still print."""

from __future__ import annotations

import pytest

from flows.cli.summary import print_summary, print_up_to_date

ACCURACY = {"scratch": 0.925, "linear_probe": 0.825, "source_only": 0.725, "full": 0.93}
VAL = {"scratch": 0.90, "linear_probe": 0.80, "source_only": 0.70, "full": 0.92}


def _gate(promote: bool, reason: str, champion_before: str | None) -> dict:
    """A promotion outcome as flows/promote.gate_and_promote returns it."""
    return {
        "model": "tlp-uci-digits",
        "candidate": "3",
        "champion_before": champion_before,
        "champion_after": "3" if promote else champion_before,
        "promoted": promote,
        "forced": False,
        "gate": {"promote": promote, "reason": reason},
        "reason": reason,
    }


REFUSED = _gate(False, "candidate accuracy 0.4993 is below the minimum 0.5000", "1")
PROMOTED = _gate(True, "gain +0.0300, McNemar p=0.01 < alpha 0.05", "2")
FIRST = _gate(True, "no champion yet; accuracy 0.9300 meets the minimum 0.5000", None)


def _summary(registered: str, negative: dict, promotion: dict | None = None) -> dict:
    aliases = ["challenger", "champion"] if promotion and promotion["promoted"] else ["challenger"]
    return {
        "tracking_uri": "sqlite:///m.db",
        "ui_command": "mlflow ui",
        "model_name": "tlp-uci-digits",
        "version": "3",
        "aliases": aliases,
        "registered_strategy": registered,
        "best": registered,
        "champion_alias": "champion",
        "challenger_alias": "challenger",
        "promotion": promotion or REFUSED,
        "candidates": {
            n: {"accuracy": a, "val_accuracy": VAL[n], "n": 400, "val_n": 50}
            for n, a in ACCURACY.items()
        },
        "transfer_gain": {n: a - 0.925 for n, a in ACCURACY.items() if n != "scratch"},
        "negative_transfer": negative,
        "selected_on": "val_accuracy",
        "skipped_stages": [],
        "wall_seconds": 12.0,
    }


FLAGS = {
    "linear_probe": {"gain": -0.1, "threshold": 0.0421, "negative": True},
    "source_only": {"gain": -0.2, "threshold": 0.0455, "negative": True},
    "full": {"gain": 0.005, "threshold": 0.0330, "negative": False},
}
HEADER = (
    "  accuracy            : test (400 images) / validation (50 images); "
    "registered: best validation accuracy"
)


def _out(capsys, summary: dict) -> str:
    print_summary(summary)
    return capsys.readouterr().out


def _lines(capsys, summary: dict) -> list[str]:
    out = _out(capsys, summary).splitlines()
    return out[out.index(HEADER) :]


def _line(out: str, label: str) -> str:
    """The text after ``label :`` on the summary's line with that label."""
    found = [x for x in out.splitlines() if x.startswith(f"  {label:<20}: ")]
    assert len(found) == 1, (label, out)
    return found[0].split(": ", 1)[1]


def test_a_refused_candidate_is_said_refused_and_not_loaded_as_champion(capsys):
    out = _out(capsys, _summary("full", {}, REFUSED))
    assert _line(out, "registered model") == "tlp-uci-digits version 3 (@challenger)"
    assert _line(out, "promotion gate") == (
        "REFUSED: candidate accuracy 0.4993 is below the minimum 0.5000"
    )
    assert _line(out, "@champion") == (
        "unchanged: version 1, an earlier model, not this run's version 3"
    )
    assert _line(out, "load this model") == (
        "mlflow.pyfunc.load_model('models:/tlp-uci-digits/3')  "
        "(or models:/tlp-uci-digits@challenger)"
    )
    assert "models:/tlp-uci-digits@champion" not in out
    assert "load it with" not in out


def test_a_refused_candidate_without_any_champion_says_there_is_none(capsys):
    out = _out(capsys, _summary("full", {}, _gate(False, "candidate accuracy 0.1 is low", None)))
    assert _line(out, "@champion") == "none: no version has passed the gate yet"
    assert "models:/tlp-uci-digits@champion" not in out


def test_a_promoted_candidate_is_loaded_as_champion(capsys):
    out = _out(capsys, _summary("full", {}, PROMOTED))
    assert _line(out, "promotion gate") == "PROMOTED: gain +0.0300, McNemar p=0.01 < alpha 0.05"
    assert _line(out, "@champion") == "version 3, this run's model (was version 2)"
    loaded = "mlflow.pyfunc.load_model('models:/tlp-uci-digits@champion')"
    assert _line(out, "load it with") == loaded


def test_the_first_champion_says_so(capsys):
    out = _out(capsys, _summary("full", {}, FIRST))
    assert _line(out, "promotion gate").startswith("PROMOTED: no champion yet;")
    assert _line(out, "@champion") == "version 3, this run's model (the first champion)"
    assert "models:/tlp-uci-digits@champion" in out


def test_a_version_already_champion_is_not_gated_again(capsys):
    already = {
        **_gate(False, "version 3 is already @champion", "3"),
        "gate": None,
        "champion_after": "3",
    }
    summary = {**_summary("full", {}, already), "aliases": ["challenger", "champion"]}
    out = _out(capsys, summary)
    assert _line(out, "promotion gate") == "not run: version 3 is already @champion"
    assert _line(out, "@champion") == "version 3, this run's model"
    assert "models:/tlp-uci-digits@champion" in out


def test_test_and_validation_accuracy_with_split_sizes_and_negative_transfer(capsys):
    lines = _lines(capsys, _summary("full", FLAGS))
    assert lines[1:6] == [
        "    scratch      0.9250 / 0.9000",
        "    linear_probe 0.8250 / 0.8000  (gain over scratch -0.1000)  NEGATIVE TRANSFER",
        "    source_only  0.7250 / 0.7000  (gain over scratch -0.2000)  NEGATIVE TRANSFER",
        "    full         0.9300 / 0.9200  (gain over scratch +0.0050)  <- registered",
        "  negative transfer   : linear_probe, source_only fell below scratch by more than the "
        "margin (linear_probe 0.0421, source_only 0.0455; evaluate.negative_transfer_margin, "
        "null: 2 standard errors)",
    ]
    assert lines[6].startswith("  skipped (up to date)")


def test_a_tie_says_which_won_and_why(capsys):
    summary = _summary("linear_probe", {})
    summary["candidates"]["full"]["val_accuracy"] = 0.80  # linear_probe comes first
    out = _out(capsys, summary)
    assert _line(out, "tie") == (
        "linear_probe, full scored the same 0.8000 on validation accuracy; linear_probe won as "
        "the first of them in transfer.strategies (ties go to the earlier)"
    )
    assert "\n  tie " not in _out(capsys, _summary("full", {}))


def test_a_registered_scratch_says_transfer_did_not_help(capsys):
    flags = {**FLAGS, "full": {"gain": -0.0, "threshold": 0.03, "negative": False}}
    lines = _lines(capsys, _summary("scratch", flags))
    assert lines[1] == "    scratch      0.9250 / 0.9000  <- registered"
    assert lines[6] == (
        "  scratch registered  : no transfer candidate (linear_probe, source_only, full) beat "
        "the from-scratch baseline on validation accuracy; the source did not help this target"
    )


def test_no_negative_transfer_no_extra_lines(capsys):
    lines = _lines(
        capsys, _summary("full", {n: {**f, "negative": False} for n, f in FLAGS.items()})
    )
    assert "NEGATIVE" not in "\n".join(lines) and len(lines) == 7  # header, 4 rows, 2 closing


def test_up_to_date_says_the_same_about_the_gate(capsys):
    saved = {"finished": "2025-01-01T00:00:00", "summary": _summary("full", FLAGS, REFUSED)}
    print_up_to_date(saved, ["challenger"], 0.1)
    out = capsys.readouterr().out
    assert _line(out, "promotion gate").startswith("REFUSED: candidate accuracy 0.4993")
    assert _line(out, "@champion").startswith("unchanged: version 1")
    assert "models:/tlp-uci-digits@champion" not in out
    assert "  negative transfer   : linear_probe, source_only fell" in out


def _older(promoted: bool) -> dict:
    """A summary saved before the gate's outcome, alias names, split sizes, validation
    accuracy and negative-transfer flags were kept (.tlp/uptodate.json of an older tlp)."""
    keep = ("model_name", "version", "registered_strategy", "transfer_gain", "ui_command")
    summary = {k: v for k, v in _summary("full", {}).items() if k in keep}
    summary["candidates"] = {n: {"accuracy": a} for n, a in ACCURACY.items()}
    summary["aliases"] = ["challenger", "champion"] if promoted else ["challenger"]
    return summary


@pytest.mark.parametrize("champion", [True, False])
def test_summaries_saved_by_older_versions_still_print(capsys, champion):
    older = _older(champion)
    print_up_to_date({"finished": "x", "summary": older}, older["aliases"], 0.1)
    out = capsys.readouterr().out
    assert "promotion gate" not in out and "NEGATIVE" not in out and "\n  tie " not in out
    assert "    full         0.9300 / n/a  (gain over scratch +0.0050)  <- registered" in out
    assert _line(out, "accuracy") == "test / validation; registered: best validation accuracy"
    if champion:
        assert _line(out, "load it with").endswith("'models:/tlp-uci-digits@champion')")
    else:
        assert _line(out, "@champion") == "not this run's model (version 3 does not hold it)"
        assert _line(out, "load this model").startswith("mlflow.pyfunc.load_model('models:/tl")
    print_summary({**older, "tracking_uri": "u", "skipped_stages": [], "wall_seconds": 1.0})
    assert "Transfer pipeline finished." in capsys.readouterr().out


def test_the_prefect_artifact_says_it_too():
    from flows.pipeline import summary_markdown

    summary = _summary("full", FLAGS, REFUSED)
    for m in summary["candidates"].values():
        m.update(macro_f1=0.5, ece=0.1)
    text = summary_markdown(summary)
    assert "**Negative transfer**: linear_probe, source_only fell below scratch" in text
    assert "**Promotion gate**: REFUSED: candidate accuracy 0.4993 is below" in text
    assert "**@champion**: unchanged: version 1" in text
    assert "Load this model: `mlflow.pyfunc.load_model('models:/tlp-uci-digits/3')" in text
    assert "| full | 0.9300 | 0.9200 | 0.5000 | 0.1000 |" in text
    assert "(test: 400 images, validation: 50 images)" in text
