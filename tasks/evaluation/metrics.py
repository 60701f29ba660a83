"""Metrics for a candidate on a frozen split, the transfer gain over the scratch baseline with a
negative-transfer flag, and forgetting: how well each transferred backbone still linearly
separates the source task, next to the source model's own backbone."""

from __future__ import annotations

import math

import numpy as np
import torch


def reliability_bins(probs: np.ndarray, labels: np.ndarray, bins: int = 15) -> list[dict]:
    """The reliability diagram's numbers: per equal-width confidence bin (Guo et al. 2017),
    the mean confidence of the top class, the accuracy and the count; empty bins left out."""
    confidence = probs.max(1)
    correct = probs.argmax(1) == labels
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, bins - 1)
    out = []
    for b in range(bins):
        in_bin = which == b
        if in_bin.any():
            out.append(
                {
                    "bin_lower": float(edges[b]),
                    "bin_upper": float(edges[b + 1]),
                    "confidence": float(confidence[in_bin].mean()),
                    "accuracy": float(correct[in_bin].mean()),
                    "count": int(in_bin.sum()),
                }
            )
    return out


def calibration_error(reliability: list[dict]) -> float:
    """ECE from the reliability bins: the count-weighted gap between accuracy and confidence."""
    n = sum(b["count"] for b in reliability)
    if n == 0:
        return float("nan")
    return float(sum(b["count"] / n * abs(b["accuracy"] - b["confidence"]) for b in reliability))


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, bins: int = 15) -> float:
    """ECE with equal-width confidence bins (Guo et al. 2017)."""
    if len(labels) == 0:
        return float("nan")
    return calibration_error(reliability_bins(probs, labels, bins))


def accuracy_interval(correct: int, n: int, confidence: float = 0.95) -> list[float]:
    """Wilson score interval of an accuracy of ``correct`` out of ``n`` (scipy's): unlike the
    normal approximation it stays inside [0, 1] and is honest at small ``n``, such as a test
    split of 40 images. ``[nan, nan]`` without examples."""
    if n == 0:
        return [float("nan"), float("nan")]
    from scipy.stats import binomtest

    ci = binomtest(int(correct), int(n)).proportion_ci(confidence, method="wilson")
    return [float(ci.low), float(ci.high)]


def classification_metrics(
    logits: torch.Tensor, labels: np.ndarray, num_classes: int, ece_bins: int = 15
) -> dict:
    """Accuracy with its 95% Wilson interval, macro-F1, ECE, the reliability bins and the
    confusion matrix (rows: true, columns: predicted)."""
    from sklearn.metrics import confusion_matrix, f1_score

    probs = torch.softmax(logits.float(), dim=1).numpy()
    preds = probs.argmax(1)
    classes = list(range(num_classes))
    correct = int((preds == labels).sum())
    reliability = reliability_bins(probs, labels, ece_bins)
    return {
        "accuracy": correct / len(labels) if len(labels) else float("nan"),
        "accuracy_ci": accuracy_interval(correct, len(labels)),
        "macro_f1": float(
            f1_score(labels, preds, labels=classes, average="macro", zero_division=0)
        ),
        "ece": calibration_error(reliability),
        "n": int(len(labels)),
        "reliability": reliability,
        "confusion_matrix": confusion_matrix(labels, preds, labels=classes).tolist(),
    }


def transfer_gain(test_accuracy: dict[str, float], baseline: str = "scratch") -> dict[str, float]:
    """Accuracy gain of each candidate over the baseline (negative means negative transfer)."""
    if baseline not in test_accuracy:
        return {}
    base = test_accuracy[baseline]
    return {name: acc - base for name, acc in test_accuracy.items() if name != baseline}


def negative_transfer(
    candidates: dict[str, dict], margin: float | None = None, baseline: str = "scratch"
) -> dict[str, dict]:
    """Gain over the baseline and whether it is below zero by more than noise.

    Without a ``margin`` (e.g. a seed std from the benchmark), noise is two standard errors
    of the difference of two accuracies measured on the same ``n`` test images.
    """
    if baseline not in candidates:
        return {}
    base = candidates[baseline]
    out = {}
    for name, m in candidates.items():
        if name == baseline:
            continue
        gain = m["accuracy"] - base["accuracy"]
        se = math.sqrt(
            sum(
                a * (1 - a) / max(1, c["n"])
                for a, c in ((m["accuracy"], m), (base["accuracy"], base))
            )
        )
        threshold = 2 * se if margin is None else margin
        out[name] = {"gain": gain, "threshold": threshold, "negative": gain < -threshold}
    return out


def select_best(scores: dict[str, float], order: list[str]) -> str:
    """Highest score; ties go to the earlier name in ``order`` (deterministic)."""
    return max(order, key=lambda name: (scores[name], -order.index(name)))


def evaluate_candidate(ckpt_dir, splits: dict, ece_bins: int) -> tuple[dict, list, list]:
    """A checkpoint's metrics on the test split (and its val accuracy), its test confusion
    matrix and its test reliability bins."""
    from tasks.modeling.batches import predict_logits
    from tasks.modeling.models import load_checkpoint

    model, card = load_checkpoint(ckpt_dir)
    result, confusion, reliability = {}, [], []
    for split, (inputs, labels) in splits.items():
        if len(labels) == 0:
            continue
        m = classification_metrics(
            predict_logits(model, inputs), labels.numpy(), card.num_classes, ece_bins
        )
        if split == "test":
            confusion, reliability = m.pop("confusion_matrix"), m.pop("reliability")
            result.update(m)
        else:
            result["val_accuracy"] = m["accuracy"]
            result["val_accuracy_ci"] = m["accuracy_ci"]
            result["val_n"] = m["n"]  # the summary says how many images chose the winner
    return result, confusion, reliability


def plot_confusion(confusion: list[list[int]], classes: tuple[str, ...], title: str):
    """A matplotlib figure of one confusion matrix (rows: true, columns: predicted)."""
    import matplotlib

    matplotlib.use("Agg")
    from sklearn.metrics import ConfusionMatrixDisplay

    display = ConfusionMatrixDisplay(np.asarray(confusion), display_labels=list(classes))
    display.plot(colorbar=False, cmap="Blues")
    display.ax_.set_title(title)
    display.figure_.tight_layout()
    return display.figure_


def _source_probe_split(ctx):
    """Source train subset and test split, preprocessed the way the source model was trained."""
    from tasks.data.loading import load_source_tensors

    p, layout = ctx.params, ctx.layout
    x_tr, y_tr, _ = load_source_tensors(layout.source_data, "train", p)
    x_te, y_te, _ = load_source_tensors(layout.source_data, "test", p)
    keep = torch.randperm(len(y_tr), generator=torch.Generator().manual_seed(p.base.seed))
    keep = keep[: p.evaluate.forgetting_train_images]
    return (x_tr[keep], y_tr[keep]), (x_te, y_te)


def forgetting(ctx, names: list[str]) -> dict:
    """Linear-probe accuracy on the source test split of each backbone (features cached)."""
    from tasks.core.context import WORK_DIR
    from tasks.modeling.features import cached_features, probe_accuracy
    from tasks.modeling.models import load_checkpoint

    p, layout = ctx.params, ctx.layout
    train, test = _source_probe_split(ctx)
    cache = ctx.project_dir / WORK_DIR / "features"
    dirs = {"source_model": layout.source_model, **{n: layout.candidates / n for n in names}}
    acc = {}
    for name, ckpt in dirs.items():
        model, _ = load_checkpoint(ckpt)
        f_tr, f_te = (cached_features(model, x, cache) for x in (train[0], test[0]))
        acc[name] = probe_accuracy(f_tr, train[1], f_te, test[1], p.transfer.probe_c, p.base.seed)
    source = acc.pop("source_model")
    return {
        "source_model_probe_accuracy": source,
        "candidates": {n: {"probe_accuracy": a, "forgetting": source - a} for n, a in acc.items()},
    }
