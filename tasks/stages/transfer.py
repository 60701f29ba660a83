"""Stage ``transfer``: every strategy in ``transfer.strategies`` -> ``models/candidates/<name>``."""

from __future__ import annotations

import logging
import math
import shutil
import time

import torch

from tasks.core import tracking
from tasks.core.context import StageContext, write_json
from tasks.data.loading import load_tensors
from tasks.data.manifest import image_channels
from tasks.data.mlflow_datasets import log_datasets, split_datasets
from tasks.data.preprocessing import conversion_note
from tasks.modeling.models import ModelCard, save_checkpoint
from tasks.modeling.strategies import STRATEGIES, Job, history_summary

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
    for name in p.transfer.strategies:
        job = Job(
            ctx, name, (x_train, y_train), (x_val, y_val), torch.cat([x_train, x_pool]), classes
        )
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
    write_json(layout.transfer_report, results)
    return results


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
