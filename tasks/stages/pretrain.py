"""Stage ``pretrain``: the source model under ``models/source``.

Trained on the labelled source (``tasks.modeling.pretraining``), or, with
``transfer.source: auto``, the best of ``rank.candidates`` ranked on the target
(``tasks.transferability.sources``).
"""

from __future__ import annotations

import logging

from tasks.core.context import StageContext
from tasks.modeling.pretraining import train_source
from tasks.transferability.selection import select_source
from tasks.transferability.selection import still_valid as auto_choice_valid

log = logging.getLogger(__name__)


def run(ctx: StageContext) -> dict:
    if ctx.params.transfer.source == "auto":
        result = select_source(ctx)
        log.info("pretrain: source chosen by ranking: %s", result["chosen"])
        return result
    result = train_source(ctx)
    log.info("pretrain: source test accuracy %.4f", result["source_test_accuracy"])
    return result


def still_valid(ctx: StageContext) -> bool:
    return auto_choice_valid(ctx)
