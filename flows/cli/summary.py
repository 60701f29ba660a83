"""What ``tlp run`` prints at its end: the run's summary, or why nothing had to run.

Both say what happened, not only what exists: the promotion gate's decision and reason,
where ``@champion`` stands and which URI loads this run's model (``@champion`` only when the
gate moved it to this version: a refused candidate is loaded by its version number), each
candidate's test and validation accuracy with the sizes of those splits, and a tie for the
registered candidate's selection score with how it was broken (flows/outcome.py words it).

Negative transfer is said here, not only in reports/metrics.json: a candidate that fell
below the from-scratch baseline by more than the noise margin is marked on its line, a
closing line names them all, and when the registered model is the scratch baseline itself
the summary says that transfer did not help this target.
"""

from __future__ import annotations

from flows import outcome


def _line(label: str, text: str) -> None:
    print(f"  {label:<20}: {text}")


def print_summary(summary: dict) -> None:
    print("\nTransfer pipeline finished.")
    _line("MLflow tracking URI", summary["tracking_uri"])
    _line("open the MLflow UI", summary["ui_command"])
    _print_model(summary, summary["aliases"])
    for finding in summary.get("audit") or ():  # tasks/registry/reconcile.py
        _line("audit", finding["message"])
    _print_accuracies(summary)
    _line("skipped (up to date)", ", ".join(summary["skipped_stages"]) or "none")
    _line("wall time", f"{summary['wall_seconds']:.1f} s  (reports/summary.json)")


def _print_model(summary: dict, aliases: list[str]) -> None:
    """The registered version, the gate's decision, where @champion is, how to load it."""
    shown = ", ".join(f"@{a}" for a in aliases) or "no alias"
    _line("registered model", f"{summary['model_name']} version {summary['version']} ({shown})")
    gate = outcome.gate_line(summary)
    if gate:
        _line("promotion gate", gate)
    champion, _ = outcome.alias_names(summary)
    _line(f"@{champion}", outcome.champion_line(summary, aliases))
    _line(*outcome.load_line(summary, aliases))


def _negative(summary: dict) -> dict[str, dict]:
    """The candidates flagged as negative transfer (summaries written before the flag was
    carried have none)."""
    flags = summary.get("negative_transfer") or {}
    return {name: f for name, f in flags.items() if f.get("negative")}


def _accuracy_header(summary: dict) -> str:
    """Which splits the two columns are, with their sizes when the summary has them."""
    test_n, val_n = outcome.split_sizes(summary)
    test = f"test ({test_n} images)" if test_n else "test"
    val = f"validation ({val_n} images)" if val_n else "validation"
    _, basis = outcome.selection_basis(summary)
    return f"{test} / {val}; registered: best {basis}"


def _print_accuracies(summary: dict) -> None:
    """Each candidate's test and validation accuracy and gain over scratch, the registered
    one marked; then a tie for first place, what negative transfer there was and whether
    scratch won because transfer did not help."""
    negative = _negative(summary)
    _line("accuracy", _accuracy_header(summary))
    for name, m in summary["candidates"].items():
        val = m.get("val_accuracy")
        shown = f"{m['accuracy']:.4f} / " + ("n/a" if val is None else f"{val:.4f}")
        gain = summary["transfer_gain"].get(name)
        extra = f"  (gain over scratch {gain:+.4f})" if gain is not None else ""
        flag = "  NEGATIVE TRANSFER" if name in negative else ""
        mark = "  <- registered" if name == summary["registered_strategy"] else ""
        print(f"    {name:<12} {shown}{extra}{flag}{mark}")
    tie = outcome.tie_line(summary)
    if tie:
        _line("tie", tie)
    if negative:
        margins = ", ".join(f"{name} {f['threshold']:.4f}" for name, f in negative.items())
        _line(
            "negative transfer",
            f"{', '.join(negative)} fell below scratch by more than the margin ({margins}; "
            "evaluate.negative_transfer_margin, null: 2 standard errors)",
        )
    others = [name for name in summary["candidates"] if name != "scratch"]
    if summary["registered_strategy"] == "scratch" and others:
        on = "validation" if summary.get("selected_on") == "val_accuracy" else "test"
        _line(
            "scratch registered",
            f"no transfer candidate ({', '.join(others)}) beat the from-scratch baseline on "
            f"{on} accuracy; the source did not help this target",
        )


def print_up_to_date(saved: dict, aliases: list[str], seconds: float) -> None:
    from tasks.stages import STAGE_NAMES

    s = saved["summary"]
    print("\nNothing changed: data and pipelines are up to date.")
    print(
        f"  params, data, code, dvc.lock and the registry are as Prefect flow run "
        f"{s.get('prefect_flow_run_name')} ({s.get('prefect_flow_run_id')}) left them "
        f"at {saved['finished']}"
    )
    _print_model(s, aliases)
    _line("MLflow parent run", str(s.get("mlflow_run_id")))
    _line("open the MLflow UI", str(s.get("ui_command")))
    _print_accuracies(s)
    # the stages of the run it matches (transfer@NAME per candidate: the same params); a
    # summary saved by an older tlp has none
    _line("skipped (up to date)", ", ".join(s.get("stage_seconds") or STAGE_NAMES))
    print(
        f"  checked in {seconds:.2f} s without starting Prefect "
        "(tlp run --force-flow runs the flow anyway)"
    )
