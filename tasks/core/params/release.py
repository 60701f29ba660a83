"""Sections of what follows training: evaluation, the registry, the export of the registered
model and the promotion gate, the schedule runs follow, and the ranking of candidate sources."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from tasks.core.params.names import check_alias, check_model_name
from tasks.core.params.overrides import parse_override
from tasks.core.params.section import Section

# transferability scores: tasks/transferability/scores.py
Score = Literal["logme", "leep", "nce", "h_score"]


class EvaluateParams(Section):
    select_on: Literal["val", "test"] = Field(
        description="split the best candidate is chosen on (val keeps test honest)"
    )
    ece_bins: int = Field(ge=2, le=100)
    negative_transfer_margin: float | None = Field(
        ge=0.0, description="gain below -margin flags negative transfer; null = 2 std errors"
    )
    forgetting: bool = Field(description="linear-probe each backbone on the source task")
    forgetting_train_images: int = Field(ge=10, description="source train images probed")


class RegistryParams(Section):
    # null: derived from the target when params resolve (Params._derive_model_name), so a
    # resolved tree always names a model, and a model holds one task (tasks/registry/identity.py)
    model_name: str | None = Field(min_length=1)
    challenger_alias: str
    champion_alias: str

    @field_validator("model_name")
    @classmethod
    def _valid_model_name(cls, value: str | None) -> str | None:
        return None if value is None else check_model_name(value)

    _valid_aliases = field_validator("challenger_alias", "champion_alias")(check_alias)


class ExportParams(Section):
    """What leaves the pipeline besides the pyfunc: an ONNX export of the registered model,
    checked against torch on the target test split before anything is registered
    (tasks/registry/export.py)."""

    onnx: bool = Field(description="export to ONNX at registration (with the parity check)")
    opset: int = Field(ge=18, le=25, description="ONNX opset; torch's dynamo exporter starts at 18")
    parity_atol: float = Field(
        gt=0.0, le=1.0, description="most absolute logit difference onnxruntime vs torch"
    )
    int8: bool = Field(
        description="also an INT8 model (onnxruntime static quantization), reported; "
        "the float model stays the export"
    )

    @model_validator(mode="after")
    def _int8_needs_onnx(self) -> ExportParams:
        if self.int8 and not self.onnx:
            raise ValueError("export.int8 quantizes the ONNX export: set export.onnx: true too")
        return self


class PromoteParams(Section):
    """The promotion gate: a candidate must beat the champion with statistical support."""

    alpha: float = Field(gt=0.0, lt=1.0, description="significance of the McNemar test")
    min_delta: float = Field(ge=0.0, le=1.0, description="least test-accuracy gain")
    min_accuracy: float = Field(
        ge=0.0, le=1.0, description="absolute floor on test accuracy, champion or not"
    )
    previous_alias: str

    _valid_alias = field_validator("previous_alias")(check_alias)
    retries: int = Field(ge=0, le=10, description="retries of transient tracking errors")
    retry_delay: float = Field(ge=0.0, le=60.0, description="first backoff, in seconds")


class ScheduleParams(Section):
    """When ``tlp serve`` runs the pipeline; read only by the scheduler, never by a stage."""

    cron: str = Field(min_length=1, description="five-field cron expression")
    timezone: str = Field(description="IANA time zone the cron is read in")
    profile: str = Field(min_length=1, description="params profile of scheduled runs")
    deployment: str = Field(min_length=1, description="Prefect deployment name")
    concurrency_limit: int = Field(ge=1, le=64, description="runs of it at the same time")
    collision_strategy: Literal["ENQUEUE", "CANCEL_NEW"] = Field(
        description="a run due while the limit is reached waits or is skipped"
    )

    @field_validator("timezone")
    @classmethod
    def _known_timezone(cls, value: str) -> str:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError("not an IANA time zone (e.g. UTC, Europe/Berlin)") from None
        return value


class CandidateParams(Section):
    """One candidate source for ``tlp rank`` and ``transfer.source: auto``.

    An entry of the list ``rank.candidates``, written by the user one by one (params.yaml's
    list is empty): its optional keys keep their defaults here, as list items must."""

    name: str | None = Field(None, description="shown in the ranking; default: path or 'pretrain'")
    path: str | None = Field(
        None,
        description="a checkpoint folder (model.safetensors + meta.json), a timm checkpoint "
        "file (.safetensors/.pth), or models:/NAME@ALIAS | models:/NAME/VERSION",
    )
    arch: str | None = Field(None, description="timm checkpoint files: the architecture")
    pretrain: tuple[str, ...] | None = Field(
        None,
        description="pretrain this candidate: --set overrides of this project's params "
        "(e.g. data.source.builtin=mnist-m); [] = the project's own pretrain",
    )

    @model_validator(mode="before")
    @classmethod
    def _default_name(cls, value: Any) -> Any:
        if isinstance(value, str):  # a path alone
            value = {"path": value}
        if isinstance(value, dict) and value.get("name") is None:
            pretrain = value.get("pretrain")
            name = value.get("path") or "pretrain"
            if pretrain:
                name = "pretrain:" + ",".join(str(x) for x in pretrain)
            value = {**value, "name": name}
        return value

    @model_validator(mode="after")
    def _one_kind(self) -> CandidateParams:
        if (self.path is None) == (self.pretrain is None):
            raise ValueError("give exactly one of path: ... or pretrain: [overrides]")
        for text in self.pretrain or ():
            parse_override(text)
        return self


class RankParams(Section):
    """Transferability ranking of candidate sources (tasks/transferability/)."""

    candidates: tuple[CandidateParams, ...]
    score: Score = Field(description="the score transfer.source: auto picks by")
    batch_size: int = Field(ge=1, le=8192, description="images per forward pass")

    @model_validator(mode="after")
    def _unique_names(self) -> RankParams:
        names = [c.name for c in self.candidates]
        if len(set(names)) != len(names):
            raise ValueError("candidate names must not repeat (give each a name:)")
        return self
