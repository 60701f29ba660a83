"""What ``tlp run`` prints at its end: the run's summary, or why nothing had to run.

Negative transfer is said here, not only in reports/metrics.json: a candidate that fell
below the from-scratch baseline by more than the noise margin is marked on its line, a
closing line names them all, and when the registered model is the scratch baseline itself
the summary says that transfer did not help this target.
"""

from __future__ import annotations


def print_summary(summary: dict) -> None:
    print("\nTransfer pipeline finished.")
    print(f"  MLflow tracking URI : {summary['tracking_uri']}")
    print(f"  open the MLflow UI  : {summary['ui_command']}")
    aliases = ", ".join(f"@{a}" for a in summary["aliases"]) or "no alias"
    print(
        f"  registered model    : {summary['model_name']} version {summary['version']} ({aliases})"
    )
    uri = f"models:/{summary['model_name']}@champion"
    print(f"  load it with        : mlflow.pyfunc.load_model('{uri}')")
    _print_accuracies(summary)
    skipped = ", ".join(summary["skipped_stages"]) or "none"
    print(f"  skipped (up to date): {skipped}")
    print(f"  wall time           : {summary['wall_seconds']:.1f} s  (reports/summary.json)")


def _negative(summary: dict) -> dict[str, dict]:
    """The candidates flagged as negative transfer (summaries written before the flag was
    carried have none)."""
    flags = summary.get("negative_transfer") or {}
    return {name: f for name, f in flags.items() if f.get("negative")}


def _print_accuracies(summary: dict) -> None:
    """Each candidate's test accuracy and gain over scratch, the registered one marked, then
    what negative transfer there was and whether scratch won because transfer did not help."""
    negative = _negative(summary)
    print("  test accuracy       :")
    for name, m in summary["candidates"].items():
        gain = summary["transfer_gain"].get(name)
        extra = f"  (gain over scratch {gain:+.4f})" if gain is not None else ""
        flag = "  NEGATIVE TRANSFER" if name in negative else ""
        mark = "  <- registered" if name == summary["registered_strategy"] else ""
        print(f"    {name:<12} {m['accuracy']:.4f}{extra}{flag}{mark}")
    if negative:
        margins = ", ".join(f"{name} {f['threshold']:.4f}" for name, f in negative.items())
        print(
            f"  negative transfer   : {', '.join(negative)} fell below scratch by more than "
            f"the margin ({margins}; evaluate.negative_transfer_margin, null: 2 standard errors)"
        )
    others = [name for name in summary["candidates"] if name != "scratch"]
    if summary["registered_strategy"] == "scratch" and others:
        on = "validation" if summary.get("selected_on") == "val_accuracy" else "test"
        print(
            f"  scratch registered  : no transfer candidate ({', '.join(others)}) beat the "
            f"from-scratch baseline on {on} accuracy; the source did not help this target"
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
    shown = ", ".join(f"@{a}" for a in aliases) or "no alias"
    print(f"  registered model    : {s['model_name']} version {s['version']} ({shown})")
    print(f"  MLflow parent run   : {s.get('mlflow_run_id')}")
    print(f"  open the MLflow UI  : {s.get('ui_command')}")
    _print_accuracies(s)
    print(f"  skipped (up to date): {', '.join(STAGE_NAMES)}")
    print(
        f"  checked in {seconds:.2f} s without starting Prefect "
        "(tlp run --force-flow runs the flow anyway)"
    )
