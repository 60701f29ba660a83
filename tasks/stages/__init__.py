"""The stage DAG as code: prepare -> validate -> pretrain -> transfer@* -> evaluate -> register.

dvc.yaml declares the same stages (``cmd: tlp stage NAME``); a test keeps the two in step.
Stage ``transfer`` expands into one stage per strategy of ``transfer.strategies``,
``transfer@NAME`` (dvc.yaml ``foreach``), so a changed knob retrains its candidate alone;
``stage_names`` is the expanded list the flow runs and DVC declares.
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
from tasks.core.params import ALL_STRATEGIES

log = logging.getLogger(__name__)

CANDIDATES = "transfer"  # the stage that expands into transfer@NAME, one per strategy


class StageFailed(RuntimeError):
    """A stage raised; the message names the stage and the original error."""


@dataclass(frozen=True)
class Stage:
    name: str
    module: str  # holds ``run(ctx) -> dict`` and, optionally, ``still_valid(ctx) -> bool``
    candidate: str | None = None  # transfer@NAME: the strategy (the module's run_candidate)

    def run(self, ctx: StageContext) -> dict:
        log.info("%s: started", self.name)
        started = time.perf_counter()
        try:
            module = importlib.import_module(self.module)
            if self.candidate is None:
                result = module.run(ctx)
            else:
                result = module.run_candidate(ctx, self.candidate)
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
    Stage(CANDIDATES, "tasks.stages.transfer"),
    Stage("evaluate", "tasks.stages.evaluate"),
    Stage("register", "tasks.stages.register"),
)
STAGE_NAMES = tuple(s.name for s in STAGES)  # transfer unexpanded: see stage_names


def candidate_stage(strategy: str) -> str:
    """The DVC stage of one candidate: ``transfer@full``."""
    return f"{CANDIDATES}@{strategy}"


def stage_names(params) -> tuple[str, ...]:
    """The DVC stages of ``params`` in the order they run: ``transfer`` expanded into
    ``transfer@NAME`` for each of ``transfer.strategies``, in their order."""
    names: list[str] = []
    for stage in STAGES:
        if stage.name == CANDIDATES:
            names += [candidate_stage(s) for s in params.transfer.strategies]
        else:
            names.append(stage.name)
    return tuple(names)


def get_stage(name: str) -> Stage:
    """``prepare`` ... ``register``, or one candidate ``transfer@NAME`` (``transfer`` alone
    trains every strategy in turn)."""
    group, _, strategy = name.partition("@")
    if group not in STAGE_NAMES or (strategy and group != CANDIDATES):
        raise KeyError(f"unknown stage {name!r} (stages: {', '.join(STAGE_NAMES)})")
    stage = STAGES[STAGE_NAMES.index(group)]
    if not strategy:
        return stage
    if strategy not in ALL_STRATEGIES:
        raise KeyError(f"unknown stage {name!r} (strategies: {', '.join(ALL_STRATEGIES)})")
    return Stage(name, stage.module, candidate=strategy)
