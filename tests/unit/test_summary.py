"""``tlp run``'s closing lines say negative transfer, not only reports/metrics.json: the
flagged candidates are marked, a closing line names them with their margins, and a
registered scratch baseline is said to mean that the source did not help."""

from __future__ import annotations

from flows.cli.summary import print_summary, print_up_to_date


def _summary(registered: str, negative: dict) -> dict:
    accuracy = {"scratch": 0.925, "linear_probe": 0.825, "source_only": 0.725, "full": 0.93}
    return {
        "tracking_uri": "sqlite:///m.db",
        "ui_command": "mlflow ui",
        "model_name": "tlp-digits",
        "version": "3",
        "aliases": ["challenger"],
        "registered_strategy": registered,
        "candidates": {n: {"accuracy": a} for n, a in accuracy.items()},
        "transfer_gain": {n: a - 0.925 for n, a in accuracy.items() if n != "scratch"},
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


def _lines(capsys, summary: dict) -> list[str]:
    print_summary(summary)
    out = capsys.readouterr().out.splitlines()
    return out[out.index("  test accuracy       :") :]


def test_negative_transfer_is_marked_and_named(capsys):
    lines = _lines(capsys, _summary("full", FLAGS))
    assert lines[1:6] == [
        "    scratch      0.9250",
        "    linear_probe 0.8250  (gain over scratch -0.1000)  NEGATIVE TRANSFER",
        "    source_only  0.7250  (gain over scratch -0.2000)  NEGATIVE TRANSFER",
        "    full         0.9300  (gain over scratch +0.0050)  <- registered",
        "  negative transfer   : linear_probe, source_only fell below scratch by more than the "
        "margin (linear_probe 0.0421, source_only 0.0455; evaluate.negative_transfer_margin, "
        "null: 2 standard errors)",
    ]
    assert lines[6].startswith("  skipped (up to date)")


def test_a_registered_scratch_says_transfer_did_not_help(capsys):
    flags = {**FLAGS, "full": {"gain": -0.0, "threshold": 0.03, "negative": False}}
    lines = _lines(capsys, _summary("scratch", flags))
    assert lines[1] == "    scratch      0.9250  <- registered"
    assert lines[6] == (
        "  scratch registered  : no transfer candidate (linear_probe, source_only, full) beat "
        "the from-scratch baseline on validation accuracy; the source did not help this target"
    )


def test_no_negative_transfer_no_extra_lines(capsys):
    lines = _lines(
        capsys, _summary("full", {n: {**f, "negative": False} for n, f in FLAGS.items()})
    )
    assert "NEGATIVE" not in "\n".join(lines) and len(lines) == 7  # header, 4 rows, 2 closing


def test_up_to_date_says_it_too_and_reads_older_records(capsys):
    saved = {"finished": "2025-01-01T00:00:00", "summary": _summary("full", FLAGS)}
    print_up_to_date(saved, ["champion"], 0.1)
    assert "  negative transfer   : linear_probe, source_only fell" in capsys.readouterr().out
    older = _summary("full", {})
    del older["negative_transfer"], older["selected_on"]  # recorded before the flags were kept
    print_up_to_date({"finished": "x", "summary": older}, [], 0.1)
    assert "NEGATIVE" not in capsys.readouterr().out


def test_the_prefect_artifact_says_it_too():
    from flows.pipeline import summary_markdown

    summary = _summary("full", FLAGS)
    for m in summary["candidates"].values():
        m.update(macro_f1=0.5, ece=0.1)
    text = summary_markdown(summary)
    assert "**Negative transfer**: linear_probe, source_only fell below scratch" in text
