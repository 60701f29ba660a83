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


class PreprocessParams(Section):
    """How a raw image becomes a model input; saved with every checkpoint."""

    image_size: int = Field(ge=8, le=512)
    channels: Literal[1, 3]
    mean: tuple[float, ...]
    std: tuple[float, ...]

    @model_validator(mode="after")
    def _stats_match_channels(self) -> PreprocessParams:
        for key in ("mean", "std"):
            if len(getattr(self, key)) != self.channels:
                raise ValueError(f"{key} needs {self.channels} value(s), one per channel")
        if any(s <= 0 for s in self.std):
            raise ValueError("std values must be > 0")
        return self


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
    source_resolution: int | None = Field(
        ge=2, description="downsample source images to this size first (match the target)"
    )
    source_fit_frame: bool = Field(
        description="crop source images to their foreground and scale it to fill the frame "
        "(size normalisation, as the target's digits were made)",
    )
    checkpoint_file: str | None = Field(
        description="start from a local timm checkpoint (pretrained_cfg_overlay file=...); "
        "in_chans and num_classes are adapted by timm; relative to the project",
    )


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
