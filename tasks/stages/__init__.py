"""The stage DAG as code: prepare -> validate -> pretrain -> transfer -> evaluate -> register.

dvc.yaml declares the same stages (``cmd: tlp stage NAME``); a test keeps the two in step.
Stages pass files, never tensors: each reads what upstream stages wrote under ``Layout``.
Each stage is a thin module of its name here (``run(ctx)``, optionally ``still_valid(ctx)``)
calling the domain packages below it; it is imported only when it runs.
"""

from __future__ import annotations

import importlib
import logging
import time
from dataclasses import dataclass

from tasks.core.context import StageContext

log = logging.getLogger(__name__)


class StageFailed(RuntimeError):
    """A stage raised; the message names the stage and the original error."""


@dataclass(frozen=True)
class Stage:
    name: str
    module: str  # holds ``run(ctx) -> dict`` and, optionally, ``still_valid(ctx) -> bool``

    def run(self, ctx: StageContext) -> dict:
        log.info("%s: started", self.name)
        started = time.perf_counter()
        try:
            result = importlib.import_module(self.module).run(ctx)
        except Exception as exc:
            raise StageFailed(f"stage '{self.name}' failed: {type(exc).__name__}: {exc}") from exc
        log.info("%s: done in %.1f s", self.name, time.perf_counter() - started)
        return result

    def still_valid(self, ctx: StageContext) -> bool:
        """Checks beyond DVC's (e.g. the registered version still exists) before skipping."""
        check = getattr(importlib.import_module(self.module), "still_valid", None)
        return True if check is None else bool(check(ctx))


STAGES: tuple[Stage, ...] = (
    Stage("prepare", "tasks.stages.prepare"),
    Stage("validate", "tasks.stages.validate"),
    Stage("pretrain", "tasks.stages.pretrain"),
    Stage("transfer", "tasks.stages.transfer"),
    Stage("evaluate", "tasks.stages.evaluate"),
    Stage("register", "tasks.stages.register"),
)
STAGE_NAMES = tuple(s.name for s in STAGES)


def get_stage(name: str) -> Stage:
    for stage in STAGES:
        if stage.name == name:
            return stage
    raise KeyError(f"unknown stage {name!r} (stages: {', '.join(STAGE_NAMES)})")
