"""Sections of the training stages: the model, its preprocessing, pretraining on the source
and the transfer strategies on the target."""

from __future__ import annotations

import math
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
# the strategies that train on source images beside the target (instance weighting applies)
SOURCE_USING_STRATEGIES = frozenset({"dann", "mmd", "multitask"})

PretrainObjective = Literal["supervised", "simclr", "byol"]
SELF_SUPERVISED: tuple[str, ...] = ("simclr", "byol")
MIN_CROP_SIDE = 4  # pixels a side the smallest random crop must keep (self-supervised views)


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


class SelfSupervisedParams(Section):
    """``pretrain.ssl``: the self-supervised objectives' heads, losses, views and monitor."""

    projection_dim: int = Field(ge=8, le=4096, description="projection head output size")
    hidden_dim: int = Field(ge=8, le=8192, description="projection/prediction head width")
    temperature: float = Field(gt=0.0, le=10.0, description="simclr: NT-Xent temperature")
    momentum: float = Field(
        ge=0.0, lt=1.0, description="byol: EMA of the target network, cosine-raised to 1"
    )
    crop_scale: tuple[float, float] = Field(
        description="random resized crop: [min, max] fraction of the image's area kept"
    )
    flip: bool = Field(description="random horizontal flip (off for digits and text)")
    jitter: float = Field(
        ge=0.0, le=1.0, description="brightness and contrast (and saturation, RGB) strength"
    )
    grayscale: float = Field(ge=0.0, le=1.0, description="RGB only: probability of grey")
    blur_sigma: float = Field(ge=0.0, le=10.0, description="largest Gaussian blur sigma; 0 = off")
    monitor_k: int = Field(
        ge=0, le=1000, description="kNN monitor on the labelled target split; 0 = off"
    )

    @model_validator(mode="after")
    def _crop_scale_ordered(self) -> SelfSupervisedParams:
        low, high = self.crop_scale
        if not 0.0 < low <= high <= 1.0:
            raise ValueError("crop_scale must be [min, max] with 0 < min <= max <= 1")
        return self


def check_augmentations(ssl: SelfSupervisedParams, image_size: int) -> None:
    """Refuse views that cannot be made at ``image_size`` pixels: a smallest crop under
    ``MIN_CROP_SIDE`` pixels a side, or a blur kernel (6 sigma + 1) wider than the image."""
    side = int((ssl.crop_scale[0] ** 0.5) * image_size)
    if side < MIN_CROP_SIDE:
        raise ValueError(
            f"pretrain.ssl.crop_scale: the smallest crop of a {image_size} px image would be "
            f"{side} px a side (fewer than {MIN_CROP_SIDE}); raise crop_scale's minimum to at "
            f"least {math.ceil(100 * (MIN_CROP_SIDE / image_size) ** 2) / 100} or "
            "preprocess.image_size"
        )
    kernel = 2 * int(-(-3 * ssl.blur_sigma // 1)) + 1 if ssl.blur_sigma > 0 else 0
    if kernel > image_size:
        raise ValueError(
            f"pretrain.ssl.blur_sigma: {ssl.blur_sigma} needs a {kernel} px blur kernel, wider "
            f"than the {image_size} px image; lower it to at most {(image_size - 1) // 6}"
        )


class PretrainParams(TrainParams):
    objective: PretrainObjective = Field(
        description="supervised: learn data.source's labels; simclr (contrastive) or byol "
        "(non-contrastive): self-supervised on pretrain.images, labels ignored"
    )
    images: Literal["source", "target"] = Field(
        description="what a self-supervised objective learns from: source = data.source's "
        "train split (a labelled dataset with its labels ignored, or a folder of unlabelled "
        "images); target = the target's train split and unlabelled pool (in-domain; never "
        "its val or test split)"
    )
    ssl: SelfSupervisedParams
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
    instance_weighting: Literal["none", "domain_classifier"] = Field(
        description="source images of dann, mmd and multitask weighted by how target-like "
        "they look: a domain classifier's density ratio p(target|x)/p(source|x)"
    )
    weight_clip: float = Field(
        ge=1.0, le=1000.0, description="largest instance weight, as a multiple of the mean"
    )

    @model_validator(mode="after")
    def _strategies_ok(self) -> TransferParams:
        if not self.strategies:
            raise ValueError("strategies must name at least one strategy")
        if len(set(self.strategies)) != len(self.strategies):
            raise ValueError("strategies must not repeat")
        return self
