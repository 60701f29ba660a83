"""Stages ``transfer@NAME``: each strategy of ``transfer.strategies`` -> ``models/candidates/
<name>`` and ``reports/transfer/<name>.json``, a DVC stage of its own (dvc.yaml ``foreach``)
that lists only the params its strategy reads (``candidate_params``), so a changed knob
retrains that candidate alone, and candidates can train at once on several workers.

With instance weighting, each source-using candidate computes the source images' weights
(deterministic: the same in every candidate) and writes their summary into its report.
"""

from __future__ import annotations

import logging
import math
import shutil
import time

import torch

from tasks.core import tracking
from tasks.core.context import (
    WORK_DIR,
    StageContext,
    candidate_report,
    remove_dropped_candidates,
    write_json,
)
from tasks.core.params import SOURCE_USING_STRATEGIES
from tasks.core.params.scaling import candidate_params
from tasks.data.loading import load_tensors
from tasks.data.manifest import image_channels
from tasks.data.mlflow_datasets import log_datasets, split_datasets
from tasks.data.preprocessing import conversion_note
from tasks.modeling.models import ModelCard, save_checkpoint
from tasks.modeling.strategies import STRATEGIES, Job, history_summary, instance_weights
from tasks.modeling.weighting import InstanceWeights

log = logging.getLogger(__name__)


def run(ctx: StageContext) -> dict:
    """Every strategy of ``transfer.strategies`` in turn, in this process (``tlp stage
    transfer``, lineage reruns); the flow and dvc.yaml run them as stages ``transfer@NAME``."""
    names = ctx.params.transfer.strategies
    remove_dropped_candidates(ctx.layout, names)
    return {name: run_candidate(ctx, name) for name in names}


def run_candidate(ctx: StageContext, name: str) -> dict:
    """Stage ``transfer@NAME``: one strategy -> ``models/candidates/<name>`` and
    ``reports/transfer/<name>.json``. The checkpoint is written beside the project's work
    files and moved into place only once complete, so a killed worker leaves no candidate
    half-written. With a search (``search.trials`` > 0 and a space for the strategy), the
    candidate is trained with the best values found (``tasks.modeling.search``)."""
    layout = ctx.layout
    conversion = conversion_note(image_channels(layout.target_data), ctx.params.preprocess.channels)
    datasets = split_datasets(
        ctx.project_dir, {"target": ("train", "val", "unlabeled"), "source": ("train",)}
    )
    job = make_job(ctx, name)
    with tracking.child_run(f"transfer/{name}", ctx.experiment_id, ctx.parent_run_id) as run_id:
        search = _search(job, run_id)
        if search is not None:
            job = tuned_job(job, search.best_params)
        p = job.params
        tracking.log_params({"strategy": name, **candidate_params(p, name)["transfer"]})
        started = time.perf_counter()
        model, history = STRATEGIES[name](job)
        seconds = time.perf_counter() - started
        # the model's own architecture: an auto-chosen source may not be model.arch
        arch = model.pretrained_cfg.get("architecture", p.model.arch)
        card = ModelCard(
            arch=arch,
            classes=job.classes,
            preprocess=p.preprocess,
            strategy=name,
            input_conversion=conversion,
        )
        _save_whole(model.cpu(), card, layout.candidates / name, ctx.project_dir)
        read = job.data_read()
        log_datasets([d for d in datasets if d[0].name.split("/") in _pairs(read)])
        result = {**history_summary(history, len(job.train[1])), "seconds": seconds}
        _log_result(name, result)
        tracking.log_metrics({k: float(v) for k, v in result.items() if not math.isnan(float(v))})
        if job.instance_weights is not None:
            _log_weights(job.instance_weights)
            result[WEIGHTS_KEY] = job.instance_weights.summary()
        if search is not None:
            result[SEARCH_KEY] = search.as_report()
    write_json(candidate_report(layout, name), result)
    return result


def make_job(ctx: StageContext, name: str) -> Job:
    """Strategy ``name``'s inputs: the target splits (and, for a weighted source-using
    strategy, the source images' weights). Module-level: search workers call it too."""
    p, layout = ctx.params, ctx.layout
    x_train, y_train, classes = load_tensors(layout.target_data, "train", p.preprocess)
    x_val, y_val, _ = load_tensors(layout.target_data, "val", p.preprocess)
    x_pool, _, _ = load_tensors(layout.target_data, "unlabeled", p.preprocess)
    job = Job(ctx, name, (x_train, y_train), (x_val, y_val), torch.cat([x_train, x_pool]), classes)
    if p.transfer.instance_weighting != "none" and name in SOURCE_USING_STRATEGIES:
        job.instance_weights = _instance_weights(job)
    return job


SEARCH_KEY = "search"  # the search's outcome in a tuned candidate's report


def _search(job: Job, run_id: str):
    """The strategy's search inside its candidate run, when ``search`` asks for one: the
    outcome, also on the run (``search.best.<key>`` params, ``search_*`` metrics)."""
    if candidate_params(job.params, job.name)["search"]["trials"] == 0:
        return None
    from tasks.modeling.search import tune

    outcome = tune(job, make_job, run_id)
    tracking.log_params(
        {
            **{f"search.best.{k}": v for k, v in outcome.best_params.items()},
            "search.study": outcome.study,
        }
    )
    tracking.log_metrics(outcome.metrics())
    log.info(
        "transfer/%s: search of %d trials (%d pruned, %d failed) in %.0f s: val accuracy %.4f "
        "(default %.4f) with %s",
        job.name,
        outcome.complete + outcome.pruned + outcome.failed,
        outcome.pruned,
        outcome.failed,
        outcome.seconds,
        outcome.best_value,
        outcome.default_value,
        ", ".join(f"{k}={v:.4g}" for k, v in outcome.best_params.items()),
    )
    return outcome


def tuned_job(job: Job, values: dict) -> Job:
    """The job with the searched values in ``transfer`` (and the stage's params tuned)."""
    from tasks.modeling.search import with_transfer

    return job.with_params(with_transfer(job.params, values))


def train_candidate(project_dir: str, name: str, parent_run_id: str | None) -> dict:
    """``run_candidate`` in a fresh process (a local worker or a Dask worker): the params are
    the project's params.resolved.yaml, and torch threads and the MLflow store are set here."""
    from pathlib import Path

    from tasks.core.context import open_context
    from tasks.core.params import load_resolved

    project = Path(project_dir)
    ctx = open_context(project, load_resolved(project), parent_run_id=parent_run_id)
    return run_candidate(ctx, name)


def _save_whole(model, card: ModelCard, out_dir, project_dir) -> None:
    """Save into the work dir, then replace ``out_dir`` in one rename."""
    partial = project_dir / WORK_DIR / "partial" / out_dir.name
    if partial.exists():
        shutil.rmtree(partial)
    save_checkpoint(model, card, partial)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    partial.rename(out_dir)


WEIGHTS_KEY = "instance_weights"  # the weights' summary in a weighted candidate's report


def _instance_weights(job: Job) -> InstanceWeights:
    weights = instance_weights(job)
    log.info(
        "instance weights: effective sample size %.0f of %d source images (%.1f%%), domain "
        "classifier AUC %.3f, %d clipped at %g",
        weights.ess,
        len(weights.weights),
        100 * weights.ess_fraction,
        weights.domain_auc,
        weights.clipped,
        weights.clip,
    )
    return weights


def _log_weights(weights: InstanceWeights) -> None:
    """The weights' summary, headline metrics and histogram on the active candidate run."""
    from tasks.evaluation.plots import plot_instance_weights

    summary = weights.summary()
    tracking.log_metrics(
        {
            "instance_weights_ess_fraction": weights.ess_fraction,
            "domain_classifier_auc": weights.domain_auc,
        }
    )
    tracking.log_dict(summary, f"{WEIGHTS_KEY}/summary.json")
    tracking.log_figure(plot_instance_weights(summary), f"{WEIGHTS_KEY}/histogram.png")


def _pairs(uses: dict[str, tuple[str, ...]]) -> list[list[str]]:
    """``{"target": ("train",)}`` as ``[["target", "train"]]``: dataset names split at "/"."""
    return [[role, split] for role, splits in uses.items() for split in splits]


def _log_result(name: str, result: dict) -> None:
    val = float(result["val_accuracy"])
    early = ""
    if result["stopped_early"]:
        early = f", stopped early (best epoch {result['best_epoch'] + 1})"
    shown = "" if math.isnan(val) else f", val accuracy {val:.4f}"
    log.info("transfer/%s: %d epochs%s%s", name, result["epochs_run"], shown, early)
