"""What stage ``validate`` reports beyond pass or fail: the domain shift between source and
target (measured, plotted, never failed: a shift is what transfer is for) and the summary as
markdown, a Prefect artifact when a flow runs the stage."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pandas as pd


def domain_shift(source: pd.DataFrame, target: pd.DataFrame) -> dict:
    """How far apart the two datasets' image statistics are (Kolmogorov-Smirnov, 0 = same)."""
    from scipy.stats import ks_2samp

    shift = {
        f"ks_{column}": round(float(ks_2samp(source[column], target[column]).statistic), 4)
        for column in ("mean", "std", "width", "height")
    }
    shift["source_modes"] = sorted(source["mode"].unique().tolist())
    shift["target_modes"] = sorted(target["mode"].unique().tolist())
    shift["source_median_size"] = [int(source["width"].median()), int(source["height"].median())]
    shift["target_median_size"] = [int(target["width"].median()), int(target["height"].median())]
    return shift


def plot_domain_shift(source: pd.DataFrame, target: pd.DataFrame, path: Path) -> Path:
    """Histograms of per-image mean and std intensity, source over target."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
    for ax, column in zip(axes, ("mean", "std"), strict=True):
        for frame, label in ((source, "source"), (target, "target")):
            ax.hist(frame[column], bins=40, alpha=0.55, density=True, label=label)
        ax.set_xlabel(f"per-image {column} intensity (0-255)")
        ax.legend()
    fig.suptitle("Domain shift: source vs target image statistics")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def summary_markdown(summary: dict, docs_index: Path) -> str:
    lines = ["## Data validation", ""]
    lines += ["| dataset | rows | expectations | failed | warned |", "|---|---|---|---|---|"]
    for name in ("source", "target"):
        s = summary[name]
        failed = ", ".join(s["failed"]) or "none"
        warned = ", ".join(s["warned"]) or "none"
        lines.append(f"| {name} | {s['rows']} | {s['expectations']} | {failed} | {warned} |")
    shift = summary["domain_shift"]
    lines += ["", f"Domain shift (KS on per-image mean / std intensity): {shift['ks_mean']} / "]
    lines[-1] += f"{shift['ks_std']}. Data Docs: `{docs_index}`."
    return "\n".join(lines) + "\n"


def publish_markdown(markdown: str) -> None:
    """A Prefect markdown artifact, only when this runs inside a Prefect flow run."""
    if "prefect" not in sys.modules:
        return  # `tlp stage validate` under dvc repro: no flow, no Prefect import cost
    from prefect.artifacts import create_markdown_artifact
    from prefect.context import FlowRunContext

    if FlowRunContext.get() is not None:
        create_markdown_artifact(markdown, key="data-validation")
