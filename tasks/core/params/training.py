"""Sections of the training stages: the model, its preprocessing, pretraining on the source
and the transfer strategies on the target."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from tasks.core.params.section import Section

Strategy = Literal[
    "scratch",
    "source_only",
    "linear_probe",
    "partial",
    "full",
    "lp_ft",
    "l2sp",
    "dann",
    "mmd",
    "multitask",
]
ALL_STRATEGIES: tuple[str, ...] = Strategy.__args__


class ModelParams(Section):
    arch: str = Field(min_length=1, description="any timm model name")


Interpolation = Literal["bilinear", "bicubic", "nearest"]


class PreprocessParams(Section):
    """How a raw image becomes a model input; saved with every checkpoint.

    A null value is taken from the source model's pretrained configuration (timm's
    ``pretrained_cfg``, or the card of a tlp checkpoint) when params are resolved, so the
    stages, the checkpoints and the served model only ever see complete values.
    """

    image_size: int | None = Field(ge=8, le=512)
    channels: Literal[1, 3] | None
    mean: tuple[float, ...] | None
    std: tuple[float, ...] | None
    interpolation: Interpolation | None

    @model_validator(mode="after")
    def _stats_match_channels(self) -> PreprocessParams:
        for key in ("mean", "std"):
            values = getattr(self, key)
            if values is not None and self.channels is not None and len(values) != self.channels:
                raise ValueError(f"{key} needs {self.channels} value(s), one per channel")
        if self.std is not None and any(s <= 0 for s in self.std):
            raise ValueError("std values must be > 0")
        return self

    @property
    def complete(self) -> bool:
        return None not in (self.image_size, self.channels, self.mean, self.std, self.interpolation)


class TrainParams(Section):
    """One training loop's knobs, shared by pretraining and fine-tuning."""

    epochs: int = Field(ge=1, le=1000)
    batch_size: int = Field(ge=1, le=8192)
    optimizer: str = Field(description="timm create_optimizer_v2 name")
    lr: float = Field(gt=0.0, le=10.0)
    weight_decay: float = Field(ge=0.0, le=1.0)
    scheduler: str = Field(description="timm create_scheduler_v2 name")
    warmup_epochs: int = Field(ge=0)
    augment_shift: int = Field(ge=0, le=8, description="random translation, in pixels")
    min_steps: int = Field(
        ge=0,
        le=100_000,
        description="train at least this many optimiser steps: with a few labels one pass "
        "is a single step, so an epoch then makes several passes",
    )

    @model_validator(mode="after")
    def _warmup_within_epochs(self) -> TrainParams:
        if self.warmup_epochs >= self.epochs and self.warmup_epochs > 0:
            raise ValueError("warmup_epochs must be smaller than epochs")
        return self


class PretrainParams(TrainParams):
    source_resolution: int | Literal["auto"] | None = Field(
        ge=2,
        description="downsample source images to this size first (match the target); auto: "
        "what the target dataset declares (uci-digits: 8), else off",
    )
    source_fit_frame: bool | Literal["auto"] = Field(
        description="crop source images to their foreground and scale it to fill the frame "
        "(size normalisation, as the target's digits were made); auto: what the target "
        "dataset declares (uci-digits: true), else false",
    )
    checkpoint: str | None = Field(
        description="the source: null = train model.arch from random weights on data.source; "
        "or a pretrained checkpoint (tasks/core/params/checkpoints.py): a built-in name, a "
        "local file or checkpoint folder, models:/NAME@ALIAS, or hub:NAME",
    )
    train_on_source: bool = Field(
        description="with a checkpoint: false = it is the source as is (nothing is trained); "
        "true = train it further on data.source (continued, domain-adaptive pretraining)",
    )
    allow_download: bool = Field(
        description="let a hub: checkpoint download weights (off by default; never in tests)"
    )

    @model_validator(mode="after")
    def _checkpoint_parses(self) -> PretrainParams:
        from tasks.core.params.checkpoints import parse_checkpoint

        if self.checkpoint is None:
            return self
        spec = parse_checkpoint(self.checkpoint)
        if spec.kind == "hub" and not self.allow_download:
            raise ValueError(
                f"checkpoint {self.checkpoint} downloads weights from the hub; set "
                "pretrain.allow_download=true to allow the network, or use a built-in or "
                "local checkpoint"
            )
        return self


class TransferParams(TrainParams):
    strategies: tuple[Strategy, ...]
    source: Literal["pretrain", "auto"] = Field(
        description="pretrain: the pretrain stage's model; auto: rank rank.candidates on the "
        "target and transfer from the top one (tasks/transferability/sources.py)",
    )
    layer_decay: float | None = Field(gt=0.0, le=1.0, description="full: per-layer LR decay")
    scratch_lr: float = Field(gt=0.0, le=10.0, description="lr of the scratch baseline")
    keep_head: bool = Field(
        description="keep the source classifier when source and target classes match"
    )
    freeze_stages: int = Field(
        ge=1, le=32, description="partial: freeze the first N layer groups (the stem is the first)"
    )
    probe_c: float = Field(gt=0.0, description="linear_probe/lp_ft: inverse L2 strength")
    l2sp_alpha: float = Field(ge=0.0, description="l2sp: pull toward the source weights")
    l2sp_beta: float = Field(ge=0.0, description="l2sp: L2 on the new head")
    adapt_weight: float = Field(ge=0.0, description="dann/mmd: weight of the domain term")
    multitask_weight: float = Field(ge=0.0, description="multitask: source-task loss weight")
    patience: int | None = Field(
        ge=1, description="early stopping on val accuracy; null = fixed epochs"
    )
    min_val_for_early_stopping: int = Field(
        ge=1, description="fewer val images than this: fixed epochs (too noisy to stop on)"
    )
    min_train_for_early_stopping: int = Field(
        ge=1, description="fewer labelled train images: fixed epochs (few steps per epoch)"
    )
    resume: bool = Field(description="continue a killed run from its last epoch")

    @model_validator(mode="after")
    def _strategies_ok(self) -> TransferParams:
        if not self.strategies:
            raise ValueError("strategies must name at least one strategy")
        if len(set(self.strategies)) != len(self.strategies):
            raise ValueError("strategies must not repeat")
        return self
