"""What every stage gets: the project's file layout, the resolved params, and where to log."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tasks.core.params import Params


@dataclass(frozen=True)
class Layout:
    """Every path a stage reads or writes, relative to the project; dvc.yaml declares the same
    (tests/integration/test_dvc_yaml.py keeps the two in agreement)."""

    root: Path

    def __getattr__(self, name: str) -> Path:
        if name in PATHS:
            return self.root / PATHS[name]
        raise AttributeError(name)


PATHS = {
    "source_data": "data/source",
    "target_data": "data/target",
    "source_model": "models/source",
    "candidates": "models/candidates",
    "validation_report": "reports/validation.json",
    # what pretrain reads of validate's outcome: the source's, not the target's (+ the
    # target's identity with transfer.source: auto, whose ranking reads the target)
    "pretrain_inputs": "reports/pretrain_inputs.json",
    "data_docs": "reports/data_docs",
    "pretrain_report": "reports/pretrain.json",
    "transfer_reports": "reports/transfer",  # <strategy>.json: one per candidate stage
    "metrics": "reports/metrics.json",
    "confusion": "reports/confusion.json",
    "calibration": "reports/calibration.json",
    "scores": "reports/scores",  # one row per candidate for `dvc metrics show`
    "plots": "reports/plots",  # records for the plots: of dvc.yaml
    "registration": "reports/registration.json",
    "export": "models/export",  # model.onnx (and model.int8.onnx with export.int8)
    "export_report": "reports/export.json",
    "model_card": "reports/model_card.md",
    "summary": "reports/summary.json",
}

# Resume states and feature caches: local to the machine, git-ignored, never a DVC output.
WORK_DIR = ".tlp"


@dataclass
class StageContext:
    project_dir: Path
    params: Params
    experiment_id: str
    tracking_uri: str
    parent_run_id: str | None = None
    flow_run: dict[str, str] = field(default_factory=dict)  # Prefect flow-run id and url

    @property
    def layout(self) -> Layout:
        return Layout(self.project_dir)


def open_context(
    project_dir: Path,
    params: Params,
    parent_run_id: str | None = None,
    flow_run: dict | None = None,
) -> StageContext:
    """Set torch threads and the MLflow store once per process, then hand out the context."""
    import torch

    from tasks.core import tracking

    torch.set_num_threads(params.base.threads)
    experiment_id = tracking.configure(
        params.storage.tracking_uri, project_dir, params.base.experiment
    )
    tracking_uri = tracking.resolve_tracking_uri(params.storage.tracking_uri, project_dir)
    return StageContext(
        project_dir, params, experiment_id, tracking_uri, parent_run_id, flow_run or {}
    )


def candidate_report(layout: Layout, name: str) -> Path:
    """``reports/transfer/<name>.json``: what stage ``transfer@<name>`` measured in training."""
    return layout.transfer_reports / f"{name}.json"


def read_candidate_reports(layout: Layout, names) -> dict[str, dict]:
    """The training summaries of the candidates ``names`` that have one, by name."""
    paths = {n: candidate_report(layout, n) for n in names}
    return {n: read_json(path) for n, path in paths.items() if path.is_file()}


def remove_dropped_candidates(layout: Layout, names) -> list[str]:
    """Remove the checkpoints and reports of candidates not in ``names`` (strategies taken
    off ``transfer.strategies``): no stage writes them any more, yet evaluate and register
    depend on the whole of ``models/candidates``, so DVC would hash them in. Returns the
    strategies removed."""
    import shutil

    keep = set(names)
    dropped = set()
    if layout.candidates.is_dir():
        for path in layout.candidates.iterdir():
            if path.is_dir() and path.name not in keep:
                shutil.rmtree(path)
                dropped.add(path.name)
    if layout.transfer_reports.is_dir():
        for path in layout.transfer_reports.glob("*.json"):
            if path.stem not in keep:
                path.unlink()
                dropped.add(path.stem)
    return sorted(dropped)


def write_json(path: Path, payload: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, sort_keys=False) + "\n")
    return path


def read_json(path: Path) -> Any:
    return json.loads(path.read_text())
