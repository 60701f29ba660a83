"""Stage ``transfer``: every strategy in ``transfer.strategies`` -> ``models/candidates/<name>``.

With instance weighting, the source images' weights are computed once, before the first
source-using strategy, and shared by all of them; their summary is written once into
reports/transfer.json (``instance_weights``), which each weighted candidate points to.
"""

from __future__ import annotations

import logging
import math
import shutil
import time

import torch

from tasks.core import tracking
from tasks.core.context import StageContext, write_json
from tasks.core.params import SOURCE_USING_STRATEGIES
from tasks.data.loading import load_tensors
from tasks.data.manifest import image_channels
from tasks.data.mlflow_datasets import log_datasets, split_datasets
from tasks.data.preprocessing import conversion_note
from tasks.modeling.models import ModelCard, save_checkpoint
from tasks.modeling.strategies import STRATEGIES, Job, history_summary, instance_weights
from tasks.modeling.weighting import InstanceWeights

log = logging.getLogger(__name__)


def run(ctx: StageContext) -> dict:
    p, layout = ctx.params, ctx.layout
    x_train, y_train, classes = load_tensors(layout.target_data, "train", p.preprocess)
    x_val, y_val, _ = load_tensors(layout.target_data, "val", p.preprocess)
    x_pool, _, _ = load_tensors(layout.target_data, "unlabeled", p.preprocess)
    conversion = conversion_note(image_channels(layout.target_data), p.preprocess.channels)
    if layout.candidates.exists():
        shutil.rmtree(layout.candidates)
    results = {}
    datasets = split_datasets(  # built once; each strategy's run gets the ones it read
        ctx.project_dir, {"target": ("train", "val", "unlabeled"), "source": ("train",)}
    )
    weights = None
    for name in p.transfer.strategies:
        job = Job(
            ctx, name, (x_train, y_train), (x_val, y_val), torch.cat([x_train, x_pool]), classes
        )
        if p.transfer.instance_weighting != "none" and name in SOURCE_USING_STRATEGIES:
            if weights is None:  # once, with the first strategy that uses them
                weights = _instance_weights(job)
            job.instance_weights = weights
        with tracking.child_run(f"transfer/{name}", ctx.experiment_id, ctx.parent_run_id):
            tracking.log_params({"strategy": name, **p.transfer.model_dump(mode="json")})
            started = time.perf_counter()
            model, history = STRATEGIES[name](job)
            seconds = time.perf_counter() - started
            # the model's own architecture: an auto-chosen source may not be model.arch
            arch = model.pretrained_cfg.get("architecture", p.model.arch)
            card = ModelCard(
                arch=arch,
                classes=classes,
                preprocess=p.preprocess,
                strategy=name,
                input_conversion=conversion,
            )
            save_checkpoint(model.cpu(), card, layout.candidates / name)
            read = job.data_read()
            log_datasets([d for d in datasets if d[0].name.split("/") in _pairs(read)])
            results[name] = {**history_summary(history, len(y_train)), "seconds": seconds}
            _log_result(name, results[name])
            tracking.log_metrics(
                {k: float(v) for k, v in results[name].items() if not math.isnan(float(v))}
            )
            if job.instance_weights is not None:
                _log_weights(job.instance_weights)
                results[name]["instance_weights"] = f"#/{WEIGHTS_KEY}"  # a JSON pointer
    if weights is not None:
        results[WEIGHTS_KEY] = weights.summary()
    write_json(layout.transfer_report, results)
    return results


WEIGHTS_KEY = "instance_weights"  # reports/transfer.json: no strategy has this name


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
