"""Stage ``pretrain``: the source model under ``models/source``.

Trained on the labelled source (``tasks.modeling.pretraining``), or, with
``transfer.source: auto``, the best of ``rank.candidates`` ranked on the target
(``tasks.transferability.sources``).
"""

from __future__ import annotations

from tasks.core.context import StageContext
from tasks.modeling.pretraining import train_source
from tasks.transferability.selection import select_source
from tasks.transferability.selection import still_valid as auto_choice_valid


def run(ctx: StageContext) -> dict:
    if ctx.params.transfer.source == "auto":
        return select_source(ctx)
    return train_source(ctx)


def still_valid(ctx: StageContext) -> bool:
    return auto_choice_valid(ctx)
