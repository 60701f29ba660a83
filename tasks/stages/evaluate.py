"""Stage ``evaluate``: every candidate on the same frozen test split; the best chosen on val."""

from __future__ import annotations

import logging

from tasks.core import tracking
from tasks.core.context import StageContext, write_json
from tasks.data.loading import load_tensors
from tasks.data.manifest import read_classes
from tasks.data.mlflow_datasets import log_datasets, log_splits
from tasks.evaluation.metrics import (
    evaluate_candidate,
    forgetting,
    negative_transfer,
    plot_confusion,
    select_best,
    transfer_gain,
)
from tasks.evaluation.plots import plot_candidates, plot_reliability
from tasks.evaluation.views import write_views

log = logging.getLogger(__name__)


def run(ctx: StageContext) -> dict:
    """Stage ``evaluate``: every candidate on the same frozen test split; best chosen on val."""
    p, layout = ctx.params, ctx.layout
    splits = {s: load_tensors(layout.target_data, s, p.preprocess)[:2] for s in ("test", "val")}
    names = list(p.transfer.strategies)
    candidates, confusion, reliability = {}, {}, {}
    with tracking.child_run("evaluate", ctx.experiment_id, ctx.parent_run_id) as run_id:
        uses = {"target": ("test", "val")}
        if p.evaluate.forgetting:  # each backbone is probed on the source splits
            uses["source"] = ("train", "test")
        datasets = log_splits(ctx.project_dir, uses)
        for name in names:
            candidates[name], confusion[name], reliability[name] = evaluate_candidate(
                layout.candidates / name, splits, p.evaluate.ece_bins
            )
        has_val = p.evaluate.select_on == "val" and len(splits["val"][1]) > 0
        select_on = "val_accuracy" if has_val else "accuracy"
        best = select_best({n: candidates[n][select_on] for n in names}, names)
        gain = transfer_gain({n: candidates[n]["accuracy"] for n in names})
        flags = negative_transfer(candidates, p.evaluate.negative_transfer_margin)
        classes = read_classes(layout.target_data)
        for name in names:
            fig = plot_confusion(confusion[name], classes, f"{name}: test confusion")
            tracking.log_figure(fig, f"confusion/{name}.png")
        metrics = {
            "best": best,
            "selected_on": select_on,
            "candidates": candidates,
            "transfer_gain": gain,
            "negative_transfer": flags,
        }
        if p.evaluate.forgetting and p.data.source.unlabeled:
            metrics["forgetting"] = {"skipped": "data.source is unlabelled: no source task"}
        elif p.evaluate.forgetting:
            metrics["forgetting"] = forgetting(ctx, names)
        target = [d for d in datasets if d[0].name.startswith("target/")]
        _log_comparison(ctx, run_id, metrics, reliability, target)
        write_json(layout.metrics, metrics)
        write_json(layout.confusion, confusion)
        write_json(layout.calibration, reliability)
        # what DVC's tables and plots read
        write_views(layout, metrics, confusion, classes, reliability)
    shown = ", ".join(f"{n} {candidates[n]['accuracy']:.4f}" for n in names)
    log.info("evaluate: test accuracy %s; best %s (on %s)", shown, best, select_on)
    return metrics


def strategy_metrics(name: str, metrics: dict) -> dict[str, float]:
    """One candidate's numbers under the names every candidate shares (``test_accuracy``,
    ``transfer_gain``, ...), so one MLflow chart compares them across strategies."""
    m = metrics["candidates"][name]
    out = {
        "test_accuracy": m["accuracy"],
        "test_accuracy_ci_low": m["accuracy_ci"][0],
        "test_accuracy_ci_high": m["accuracy_ci"][1],
        "macro_f1": m["macro_f1"],
        "ece": m["ece"],
        "test_n": m["n"],
    }
    if "val_accuracy" in m:
        out.update(val_accuracy=m["val_accuracy"], val_n=m["val_n"])
    flag = metrics["negative_transfer"].get(name)
    if flag is not None:
        out.update(transfer_gain=flag["gain"], negative_transfer=float(flag["negative"]))
    forgot = metrics.get("forgetting", {}).get("candidates", {}).get(name)
    if forgot is not None:
        out.update(forgetting=forgot["forgetting"], source_probe_accuracy=forgot["probe_accuracy"])
    return out


def candidates_table(metrics: dict) -> dict[str, list]:
    """The candidates as columns (MLflow's ``log_table``: one row per strategy)."""
    rows = [
        {"strategy": n, "registered": n == metrics["best"], **strategy_metrics(n, metrics)}
        for n in metrics["candidates"]
    ]
    columns = list(dict.fromkeys(k for row in rows for k in row))
    return {c: [row.get(c) for row in rows] for c in columns}


def _log_comparison(
    ctx: StageContext, run_id: str, metrics: dict, reliability: dict, datasets: list
) -> None:
    """What lets a reviewer compare the candidates in MLflow: a run ``evaluate/<strategy>``
    per candidate under this one, logging the same metric names (one chart, a bar each);
    the table of candidates; test and validation accuracy side by side with 95% intervals;
    the reliability diagrams."""
    candidates = metrics["candidates"]
    for name in candidates:
        child = tracking.log_child_run(
            f"evaluate/{name}",
            ctx.experiment_id,
            run_id,
            strategy_metrics(name, metrics),
            {"strategy": name, "registered": str(name == metrics["best"]).lower()},
        )
        log_datasets(datasets, child)
    tracking.set_tags({"best": metrics["best"], "selected_on": metrics["selected_on"]})
    tracking.log_table(candidates_table(metrics), "candidates.json")
    fig = plot_candidates(candidates, metrics["best"])
    tracking.log_figure(fig, "candidates.png")
    ece = {n: m["ece"] for n, m in candidates.items()}
    tracking.log_figure(plot_reliability(reliability, ece), "calibration/reliability.png")
