"""Stage ``evaluate``: every candidate on the same frozen test split; the best chosen on val."""

from __future__ import annotations

import logging

from tasks.core import tracking
from tasks.core.context import StageContext, write_json
from tasks.data.loading import load_tensors
from tasks.data.manifest import read_classes
from tasks.evaluation.metrics import (
    evaluate_candidate,
    forgetting,
    negative_transfer,
    plot_confusion,
    select_best,
    transfer_gain,
)
from tasks.evaluation.views import write_views

log = logging.getLogger(__name__)
COUNTS = ("n", "val_n")  # split sizes: in reports/metrics.json, not MLflow metrics


def run(ctx: StageContext) -> dict:
    """Stage ``evaluate``: every candidate on the same frozen test split; best chosen on val."""
    p, layout = ctx.params, ctx.layout
    splits = {s: load_tensors(layout.target_data, s, p.preprocess)[:2] for s in ("test", "val")}
    names = list(p.transfer.strategies)
    candidates, confusion = {}, {}
    with tracking.child_run("evaluate", ctx.experiment_id, ctx.parent_run_id):
        for name in names:
            candidates[name], confusion[name] = evaluate_candidate(
                layout.candidates / name, splits, p.evaluate.ece_bins
            )
            tracking.log_metrics(
                {f"{name}_test_{k}": v for k, v in candidates[name].items() if k not in COUNTS}
            )
        has_val = p.evaluate.select_on == "val" and len(splits["val"][1]) > 0
        select_on = "val_accuracy" if has_val else "accuracy"
        best = select_best({n: candidates[n][select_on] for n in names}, names)
        gain = transfer_gain({n: candidates[n]["accuracy"] for n in names})
        tracking.log_metrics({f"transfer_gain_{n}": g for n, g in gain.items()})
        flags = negative_transfer(candidates, p.evaluate.negative_transfer_margin)
        tracking.log_metrics({f"negative_transfer_{n}": f["negative"] for n, f in flags.items()})
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
        if p.evaluate.forgetting:
            metrics["forgetting"] = forgetting(ctx, names)
            tracking.log_metrics(
                {
                    f"forgetting_{n}": f["forgetting"]
                    for n, f in metrics["forgetting"]["candidates"].items()
                }
            )
        write_json(layout.metrics, metrics)
        write_json(layout.confusion, confusion)
        write_views(layout, metrics, confusion, classes)  # what DVC's tables and plots read
    shown = ", ".join(f"{n} {candidates[n]['accuracy']:.4f}" for n in names)
    log.info("evaluate: test accuracy %s; best %s (on %s)", shown, best, select_on)
    return metrics
