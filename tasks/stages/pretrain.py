"""Stage ``pretrain``: the source model under ``models/source``.

Trained on the labelled source, or self-supervised on unlabelled images
(``pretrain.objective``; ``tasks.modeling.pretraining``); or a pretrained checkpoint
(``pretrain.checkpoint``), verified and taken as it is, or trained further on the source
with ``pretrain.train_on_source`` (``tasks.transferability.pretrained``); or, with
``transfer.source: auto``, the best of ``rank.candidates`` ranked on the target
(``tasks.transferability.sources``).
"""

from __future__ import annotations

import logging

from tasks.core.context import StageContext
from tasks.transferability.pretrained import make_source
from tasks.transferability.pretrained import still_valid as checkpoint_valid
from tasks.transferability.selection import select_source
from tasks.transferability.selection import still_valid as auto_choice_valid

log = logging.getLogger(__name__)


def run(ctx: StageContext) -> dict:
    if ctx.params.transfer.source == "auto":
        result = select_source(ctx)
        log.info("pretrain: source chosen by ranking: %s", result["chosen"])
        return result
    result = make_source(ctx)
    record = result.get("checkpoint")
    if record:
        log.info(
            "pretrain: source checkpoint %s (%s, sha256 %s)",
            record["spec"],
            record["arch"],
            record["sha256"][:12],
        )
    if result["trained"] and result["source_test_accuracy"] is None:  # self-supervised
        knn = result["final_knn_accuracy"]
        log.info(
            "pretrain: %s on %s images, final loss %.4f%s",
            result["objective"],
            result["images"],
            result["final_train_loss"],
            "" if knn is None else f", target kNN accuracy {knn:.4f}",
        )
    elif result["trained"]:
        log.info("pretrain: source test accuracy %.4f", result["source_test_accuracy"])
    else:
        log.info("pretrain: nothing trained (pretrain.train_on_source is false)")
    return result


def still_valid(ctx: StageContext) -> bool:
    return auto_choice_valid(ctx) and checkpoint_valid(ctx)
