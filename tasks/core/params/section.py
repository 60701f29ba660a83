"""What every params section shares: the error type and the strict, frozen base model."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class ParamsError(ValueError):
    """A params.yaml value, profile or override is wrong; the message names the key."""


class Section(BaseModel):
    """A section of params.yaml. Unknown keys are errors (a typo must not pass silently) and
    values are frozen (a stage cannot change what DVC recorded). Fields declare types and
    bounds only: their values come from params.yaml, the one source of defaults. No float
    may be NaN or infinite (``allow_inf_nan``): a NaN ``preprocess.std`` or ``lr`` would
    train garbage for minutes and then fail far from the cause."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)
