"""Sections of scale-out and search: where candidates train (``engine``) and how each
candidate's hyperparameters are searched (``search``), plus what each candidate depends on.

Each candidate strategy is its own DVC stage (``transfer@NAME``, dvc.yaml ``foreach``). A stage
lists only the params it reads: ``candidate_params`` gives, per strategy, the ``transfer.*``
keys the strategy reads (``STRATEGY_KEYS``; tests/unit/test_candidate_params.py records the
keys each strategy actually reads and fails on one missing here) and its search settings.
``params.resolved.yaml`` carries them as the derived section ``candidates``, so changing
``transfer.l2sp_alpha`` reruns ``transfer@l2sp`` alone.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from tasks.core.params.section import Section
from tasks.core.params.training import ALL_STRATEGIES, TrainParams, TransferParams

# what the shared training loop reads (tasks.modeling.training.fit and the early-stopping rule)
TRAINING_KEYS: tuple[str, ...] = (
    *TrainParams.model_fields,
    "patience",
    "min_val_for_early_stopping",
    "min_train_for_early_stopping",
    "resume",
)
_SOURCE = ("source", "keep_head")  # every strategy that starts from the source model
_WEIGHTED = ("instance_weighting", "weight_clip")
_FINE_TUNED = tuple(k for k in TRAINING_KEYS if k != "lr")  # lr is per strategy (scratch_lr)

STRATEGY_KEYS: dict[str, tuple[str, ...]] = {
    "scratch": (*_FINE_TUNED, "scratch_lr"),
    "source_only": ("source",),
    "linear_probe": (*_SOURCE, "probe_c"),
    "partial": (*_SOURCE, *TRAINING_KEYS, "freeze_stages"),
    "full": (*_SOURCE, *TRAINING_KEYS, "layer_decay"),
    "lp_ft": (*_SOURCE, *TRAINING_KEYS, "probe_c", "layer_decay"),
    "l2sp": (*_SOURCE, *TRAINING_KEYS, "l2sp_alpha", "l2sp_beta"),
    "dann": (*_SOURCE, *TRAINING_KEYS, "adapt_weight", *_WEIGHTED),
    "mmd": (*_SOURCE, *TRAINING_KEYS, "adapt_weight", *_WEIGHTED),
    "multitask": (*_SOURCE, *TRAINING_KEYS, "multitask_weight", *_WEIGHTED),
}
assert set(STRATEGY_KEYS) == set(ALL_STRATEGIES)


class EngineParams(Section):
    """Where candidates (and search trials) run. Not in the params hash: where a candidate
    trains never changes what it learns."""

    runner: Literal["local", "dask"] = Field(
        description="local: this machine (worker processes when workers > 1); dask: the Dask "
        "cluster at engine.address (its workers must see the project at the same path)"
    )
    workers: Annotated[int, Field(ge=1, le=256)] | Literal["auto"] = Field(
        description="local: candidates at once; auto = CPU cores // base.threads; 1 = in this "
        "process, one after another",
    )
    address: str | None = Field(description="dask: the scheduler address, e.g. tcp://10.0.0.5:8786")
    retries: int = Field(
        ge=0, le=10, description="a candidate whose worker died is run again this many times"
    )

    @model_validator(mode="after")
    def _address_for_dask(self) -> EngineParams:
        if self.runner == "dask" and not self.address:
            raise ValueError(
                "runner: dask needs engine.address (the scheduler, e.g. tcp://127.0.0.1:8786)"
            )
        if self.address and not self.address.startswith(("tcp://", "tls://", "inproc://")):
            raise ValueError(
                f"address {self.address!r} is not a Dask scheduler address (tcp://HOST:PORT)"
            )
        return self

    def local_workers(self, threads: int) -> int:
        """Candidates at once on this machine: ``workers``, or cores // ``base.threads``."""
        if self.workers != "auto":
            return self.workers
        import os

        return max(1, (os.cpu_count() or 1) // threads)


class SearchRange(Section):
    """One searched ``transfer.*`` key: a range [low, high] (log-uniform with ``log``), or a
    list of ``choices``. Integer keys (freeze_stages) draw integers."""

    low: float | None = None
    high: float | None = None
    log: bool = False
    choices: tuple[float, ...] | None = None

    @model_validator(mode="after")
    def _range_or_choices(self) -> SearchRange:
        if self.choices is not None:
            if self.low is not None or self.high is not None or not self.choices:
                raise ValueError("give either choices or low and high")
            return self
        if self.low is None or self.high is None or not self.low < self.high:
            raise ValueError("needs low < high (or choices)")
        if self.log and self.low <= 0:
            raise ValueError("a log range needs low > 0")
        return self


class SearchParams(Section):
    """Optuna search of each candidate's hyperparameters on validation accuracy."""

    trials: int = Field(ge=0, le=10000, description="trials per candidate; 0 = no search")
    time_limit: float | None = Field(
        gt=0, description="seconds of wall time for one candidate's search; null = no limit"
    )
    parallel: int = Field(ge=1, le=256, description="trials at once, on the engine")
    pruner: Literal["median", "none"] = Field(
        description="median: stop a trial whose val accuracy at an epoch is below the median "
        "of earlier trials at that epoch"
    )
    startup_trials: int = Field(
        ge=0, le=1000, description="random trials before TPE models the space (and prunes)"
    )
    space: dict[str, dict[str, SearchRange]] = Field(
        description="per strategy, the transfer.* keys searched and their ranges"
    )

    @model_validator(mode="after")
    def _space_keys_known(self) -> SearchParams:
        for strategy, keys in self.space.items():
            if strategy not in STRATEGY_KEYS:
                raise ValueError(f"space.{strategy}: not a strategy ({', '.join(ALL_STRATEGIES)})")
            for key in keys:
                if key not in STRATEGY_KEYS[strategy]:
                    raise ValueError(
                        f"space.{strategy}.{key}: {strategy} does not read transfer.{key}"
                    )
                kind = TransferParams.model_fields[key].annotation
                if "float" not in str(kind) and "int" not in str(kind):
                    raise ValueError(f"space.{strategy}.{key}: transfer.{key} is not a number")
        return self


def candidate_params(params, name: str) -> dict:
    """What stage ``transfer@NAME`` depends on beyond the model and data: the transfer keys
    the strategy reads, and its search (only ``trials: 0`` when there is none, so a change to
    another strategy's search space does not retrain it)."""
    transfer = params.transfer.model_dump(mode="json")
    search = params.search
    space = search.space.get(name) or {}
    searched = (
        {"trials": 0}
        if search.trials == 0 or not space
        else {
            **search.model_dump(mode="json", exclude={"space", "parallel"}),
            "space": {k: r.model_dump(mode="json") for k, r in space.items()},
        }
    )
    return {
        "transfer": {k: transfer[k] for k in STRATEGY_KEYS[name]},
        "search": searched,
    }
