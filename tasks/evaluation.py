"""Metrics for a candidate on a frozen split, and the transfer gain over the scratch baseline."""

from __future__ import annotations

import numpy as np
import torch


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, bins: int = 15) -> float:
    """ECE with equal-width confidence bins (Guo et al. 2017)."""
    if len(labels) == 0:
        return float("nan")
    confidence = probs.max(1)
    correct = probs.argmax(1) == labels
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, bins - 1)
    ece = 0.0
    for b in range(bins):
        in_bin = which == b
        if in_bin.any():
            ece += in_bin.mean() * abs(correct[in_bin].mean() - confidence[in_bin].mean())
    return float(ece)


def classification_metrics(
    logits: torch.Tensor, labels: np.ndarray, num_classes: int, ece_bins: int = 15
) -> dict:
    """Accuracy, macro-F1, ECE and the confusion matrix (rows: true, columns: predicted)."""
    from sklearn.metrics import confusion_matrix, f1_score

    probs = torch.softmax(logits.float(), dim=1).numpy()
    preds = probs.argmax(1)
    classes = list(range(num_classes))
    return {
        "accuracy": float((preds == labels).mean()) if len(labels) else float("nan"),
        "macro_f1": float(
            f1_score(labels, preds, labels=classes, average="macro", zero_division=0)
        ),
        "ece": expected_calibration_error(probs, labels, ece_bins),
        "n": int(len(labels)),
        "confusion_matrix": confusion_matrix(labels, preds, labels=classes).tolist(),
    }


def transfer_gain(test_accuracy: dict[str, float], baseline: str = "scratch") -> dict[str, float]:
    """Accuracy gain of each candidate over the baseline (negative means negative transfer)."""
    if baseline not in test_accuracy:
        return {}
    base = test_accuracy[baseline]
    return {name: acc - base for name, acc in test_accuracy.items() if name != baseline}


def select_best(scores: dict[str, float], order: list[str]) -> str:
    """Highest score; ties go to the earlier name in ``order`` (deterministic)."""
    return max(order, key=lambda name: (scores[name], -order.index(name)))


def _evaluate_candidate(ckpt_dir, splits: dict, ece_bins: int) -> tuple[dict, list]:
    from tasks.models import load_checkpoint
    from tasks.training import predict_logits

    model, card = load_checkpoint(ckpt_dir)
    result, confusion = {}, []
    for split, (inputs, labels) in splits.items():
        if len(labels) == 0:
            continue
        m = classification_metrics(
            predict_logits(model, inputs), labels.numpy(), card.num_classes, ece_bins
        )
        if split == "test":
            confusion = m.pop("confusion_matrix")
            result.update(m)
        else:
            result["val_accuracy"] = m["accuracy"]
    return result, confusion


def run(ctx) -> dict:
    """Stage ``evaluate``: every candidate on the same frozen test split; best chosen on val."""
    from tasks import tracking
    from tasks.context import write_json
    from tasks.datasets import load_tensors

    p, layout = ctx.params, ctx.layout
    splits = {s: load_tensors(layout.target_data, s, p.preprocess)[:2] for s in ("test", "val")}
    names = list(p.transfer.strategies)
    candidates, confusion = {}, {}
    with tracking.child_run("evaluate", ctx.experiment_id, ctx.parent_run_id):
        for name in names:
            candidates[name], confusion[name] = _evaluate_candidate(
                layout.candidates / name, splits, p.evaluate.ece_bins
            )
            tracking.log_metrics(
                {f"{name}_test_{k}": v for k, v in candidates[name].items() if k != "n"}
            )
        has_val = p.evaluate.select_on == "val" and len(splits["val"][1]) > 0
        select_on = "val_accuracy" if has_val else "accuracy"
        best = select_best({n: candidates[n][select_on] for n in names}, names)
        gain = transfer_gain({n: candidates[n]["accuracy"] for n in names})
        tracking.log_metrics({f"transfer_gain_{n}": g for n, g in gain.items()})
        metrics = {
            "best": best,
            "selected_on": select_on,
            "candidates": candidates,
            "transfer_gain": gain,
        }
        write_json(layout.metrics, metrics)
        write_json(layout.confusion, confusion)
    return metrics
