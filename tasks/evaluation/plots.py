"""Figures a reviewer compares candidates by: test and validation accuracy side by side with
their 95% intervals, and reliability diagrams (does a 90% confident answer come true 90% of
the time?). matplotlib loads when a figure is drawn, not when the module is imported."""

from __future__ import annotations

import math


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _error(value: float, ci: list[float] | None) -> tuple[float, float]:
    """Distances from ``value`` down and up to its interval (0 without one)."""
    if not ci or any(math.isnan(x) for x in ci):
        return 0.0, 0.0
    return max(0.0, value - ci[0]), max(0.0, ci[1] - value)


def plot_candidates(candidates: dict[str, dict], best: str | None = None, baseline="scratch"):
    """Test and validation accuracy of every candidate, side by side, with 95% Wilson
    intervals; the registered one marked, the baseline's test accuracy a dashed line."""
    import numpy as np

    plt = _pyplot()
    names = list(candidates)
    x = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(max(6.0, 1.1 * len(names) + 3), 4), layout="constrained")
    for offset, key, label in ((-0.2, "accuracy", "test"), (0.2, "val_accuracy", "validation")):
        values = [float(candidates[n].get(key, math.nan)) for n in names]
        errors = np.array(
            [_error(v, candidates[n].get(f"{key}_ci")) for v, n in zip(values, names, strict=True)]
        ).T
        n_key = "n" if key == "accuracy" else "val_n"
        sizes = {candidates[n].get(n_key) for n in names} - {None}
        shown = f"{label} (n={sizes.pop()})" if len(sizes) == 1 else label
        ax.bar(x + offset, values, 0.4, yerr=errors, capsize=3, label=shown)
    if baseline in candidates:
        ax.axhline(candidates[baseline]["accuracy"], color="grey", ls="--", lw=1)
    ax.set_xticks(x, [f"{n}\n(registered)" if n == best else n for n in names])
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("accuracy (95% Wilson interval)")
    ax.set_title("Candidates side by side")
    fig.legend(loc="outside right upper")
    return fig


def plot_reliability(bins: dict[str, list[dict]], ece: dict[str, float] | None = None):
    """One reliability diagram per candidate: accuracy per confidence bin against the
    diagonal of perfect calibration; bars below it mean over-confidence."""
    plt = _pyplot()
    names = list(bins)
    cols = min(len(names), 5)
    rows = math.ceil(len(names) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 3.2 * rows), squeeze=False)
    for ax in axes.flat[len(names) :]:
        ax.set_visible(False)
    for ax, name in zip(axes.flat, names, strict=False):
        rows_ = bins[name]
        lower = [b["bin_lower"] for b in rows_]
        width = [b["bin_upper"] - b["bin_lower"] for b in rows_]
        ax.bar(lower, [b["accuracy"] for b in rows_], width, align="edge", edgecolor="black")
        ax.plot([b["confidence"] for b in rows_], [b["accuracy"] for b in rows_], "o", ms=3)
        ax.plot([0, 1], [0, 1], color="grey", ls="--", lw=1)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_xlabel("confidence")
        ax.set_ylabel("accuracy")
        shown = "" if ece is None or name not in ece else f" (ECE {ece[name]:.3f})"
        ax.set_title(f"{name}{shown}", fontsize=10)
    fig.tight_layout()
    return fig


def plot_instance_weights(summary: dict):
    """Histogram of the source images' instance weights (``InstanceWeights.summary()``):
    mass near 0 is source the target does not resemble; a spike at the cap, clipped ratios."""
    plt = _pyplot()
    edges, counts = summary["histogram"]["edges"], summary["histogram"]["counts"]
    widths = [b - a for a, b in zip(edges[:-1], edges[1:], strict=True)]
    fig, ax = plt.subplots(figsize=(6, 3.5), layout="constrained")
    ax.bar(edges[:-1], counts, widths, align="edge", edgecolor="black")
    ax.axvline(1.0, color="grey", ls="--", lw=1)  # the mean weight
    ax.set_xlabel(f"weight (mean 1, capped at {summary['clip']:g})")
    ax.set_ylabel("source images")
    ax.set_title(
        f"ESS {100 * summary['ess_fraction']:.1f}% of {summary['images']}, "
        f"domain AUC {summary['domain_auc']:.3f}, {summary['clipped']} clipped",
        fontsize=10,
    )
    return fig
