"""What DVC's own views read, written by stage ``evaluate`` next to reports/metrics.json.

* ``reports/scores/<candidate>.json``: a few key numbers per candidate, the only files
  dvc.yaml declares as ``metrics``, so ``dvc metrics show`` prints one narrow row per
  candidate and ``dvc exp show`` one column per number and candidate. The detailed
  reports/metrics.json (every flag, threshold and forgetting figure) stays an ordinary
  ``cache: false`` output, read by tlp, not spread over DVC's tables.
* ``reports/plots/*.json``: record lists for the ``plots:`` of dvc.yaml (DVC plots read the
  first list of records in a file, so each plot gets one): the registered candidate's test
  confusion (DVC's ``confusion`` template), each candidate's test accuracy (a bar chart) and,
  when the calibration bins are given, the registered candidate's reliability diagram.

Both folders are emptied first: a candidate dropped from ``transfer.strategies`` must not
leave its row behind.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from tasks.core.context import Layout, write_json


def score_row(name: str, metrics: dict) -> dict:
    """One candidate's key numbers, rounded so a table of them stays narrow. What is the same
    for every candidate (the split sizes) or says which won is in reports/metrics.json and
    the plots, not repeated as a column per candidate in ``dvc exp show``."""
    m = metrics["candidates"][name]
    row = {
        "test_acc": round(m["accuracy"], 4),
        "val_acc": None if m.get("val_accuracy") is None else round(m["val_accuracy"], 4),
        "macro_f1": round(m["macro_f1"], 4),
        "ece": round(m["ece"], 4),
        "gain": None,  # over scratch; scratch has none
    }
    if name in metrics.get("transfer_gain", {}):
        row["gain"] = round(metrics["transfer_gain"][name], 4)
    forgetting = metrics.get("forgetting", {}).get("candidates", {}).get(name)
    if forgetting is not None:
        row["forgetting"] = round(forgetting["forgetting"], 4)
    return {k: v for k, v in row.items() if v is not None}


def confusion_records(matrix: list[list[int]], classes: tuple[str, ...]) -> list[dict]:
    """One record per test image, ``actual`` and ``predicted`` class names, as DVC's
    confusion template counts them (rows of ``matrix``: true class, columns: predicted)."""
    return [
        {"actual": classes[i], "predicted": classes[j]}
        for i, row in enumerate(matrix)
        for j, count in enumerate(row)
        for _ in range(count)
    ]


def accuracy_records(metrics: dict) -> list[dict]:
    """Each candidate's test and validation accuracy, for the bar chart."""
    return [
        {
            "candidate": name,
            "test_accuracy": m["accuracy"],
            "val_accuracy": m.get("val_accuracy"),
        }
        for name, m in metrics["candidates"].items()
    ]


def reliability_records(bins: list[dict]) -> list[dict]:
    """The non-empty calibration bins of one candidate (reports/calibration.json's records:
    bin_lower, bin_upper, confidence, accuracy, count), for the reliability diagram."""
    return [dict(b) for b in bins if b.get("count")]


def _fresh(folder: Path) -> Path:
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    return folder


def write_views(
    layout: Layout,
    metrics: dict,
    confusion: dict[str, list[list[int]]],
    classes: tuple[str, ...],
    calibration: dict[str, list[dict]] | None = None,
) -> None:
    """reports/scores/ and reports/plots/ from what stage evaluate measured; ``calibration``
    is ``{candidate: [bin records]}`` (reports/calibration.json), optional."""
    scores, plots = _fresh(layout.scores), _fresh(layout.plots)
    for name in metrics["candidates"]:
        write_json(scores / f"{name}.json", score_row(name, metrics))
    best = metrics["best"]
    write_json(plots / "confusion.json", confusion_records(confusion[best], classes))
    write_json(plots / "accuracy.json", accuracy_records(metrics))
    if calibration and calibration.get(best):
        write_json(plots / "reliability.json", reliability_records(calibration[best]))
