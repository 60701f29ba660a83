"""Typed view of params.yaml: profiles, ``--set`` overrides, validation before any work.

params.yaml holds the ``default`` profile in its stage sections and the overrides of every
other profile under ``profiles:``. Resolving applies profile then ``--set`` overrides, and
validates the result with pydantic; unknown keys and out-of-range values are rejected with
a message that names the dotted key. The resolved tree is written to
``params.resolved.yaml``, the file dvc.yaml's stages take their params from, so DVC
records exactly the values each stage ran with.
"""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

PARAMS_FILE = "params.yaml"
RESOLVED_PARAMS_FILE = "params.resolved.yaml"
DEFAULT_PROFILE = "default"

STRATEGIES = ("scratch", "full")
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
# the built-in datasets; their recipes are tasks.data.datasets.BUILTINS (a test keeps both equal)
BUILTIN_DATASETS = ("mnist5k", "uci-digits", "mnist-m")
# transferability scores: tasks/transferability/scores.py
Score = Literal["logme", "leep", "nce", "h_score"]


class ParamsError(ValueError):
    """A params.yaml value, profile or override is wrong; the message names the key."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class BaseParams(_Section):
    seed: int = Field(0, ge=0, description="seed for training, shuffling and augmentation")
    device: Literal["cpu", "cuda", "auto"] = "cpu"
    threads: int = Field(2, ge=1, le=256, description="torch intra-op threads")
    tracking_uri: str = Field(
        "sqlite:///mlflow.db", description="MLflow store; relative sqlite paths are in the project"
    )
    experiment: str = Field("transfer-pipeline", min_length=1)
    dvc_remote: str = Field("dvc-storage", min_length=1, description="DVC remote URL or local dir")
    dvc_remote_endpoint: str | None = Field(
        None, description="S3-compatible endpoint of the DVC remote (MinIO, moto); null = AWS"
    )


class DatasetParams(_Section):
    builtin: str | None = Field(None, description="one of BUILTIN_DATASETS")
    path: str | None = Field(
        None, description="an ImageFolder directory (one subfolder per class); replaces builtin"
    )
    classes: tuple[str, ...] | None = Field(
        None, description="the label space; folder names must be among these (label = index)"
    )
    skip_bad_files: bool = Field(
        False, description="skip (and count) unreadable or invalid files instead of failing"
    )
    limit: int | None = Field(None, ge=10, description="stratified subsample before splitting")
    test_fraction: float = Field(0.2, gt=0.0, lt=1.0)
    val_per_class: int = Field(0, ge=0, description="labelled validation images per class")
    labels_per_class: int | None = Field(
        None, ge=1, description="labelled training images per class; null = all the rest"
    )

    @model_validator(mode="after")
    def _one_source(self) -> DatasetParams:
        if (self.builtin is None) == (self.path is None):
            raise ValueError("give exactly one of builtin: NAME or path: DIR")
        if self.builtin is not None and self.builtin not in BUILTIN_DATASETS:
            known = ", ".join(sorted(BUILTIN_DATASETS))
            raise ValueError(f"unknown built-in dataset {self.builtin!r} (known: {known})")
        if self.classes is not None and len(set(self.classes)) != len(self.classes):
            raise ValueError("classes must not repeat")
        return self


class DataParams(_Section):
    split_seed: int = Field(0, ge=0, description="fixes the test split independently of base.seed")
    max_image_pixels: int = Field(
        16_000_000, ge=64, description="larger images are rejected (decompression bombs)"
    )
    source: DatasetParams
    target: DatasetParams


class PreprocessParams(_Section):
    """How a raw image becomes a model input; saved with every checkpoint."""

    image_size: int = Field(32, ge=8, le=512)
    channels: Literal[1, 3] = 1
    mean: tuple[float, ...] = (0.5,)
    std: tuple[float, ...] = (0.5,)

    @model_validator(mode="after")
    def _stats_match_channels(self) -> PreprocessParams:
        for key in ("mean", "std"):
            if len(getattr(self, key)) != self.channels:
                raise ValueError(f"{key} needs {self.channels} value(s), one per channel")
        if any(s <= 0 for s in self.std):
            raise ValueError("std values must be > 0")
        return self


class ValidationParams(_Section):
    """Bounds of the Great Expectations suites run on every manifest (stage validate)."""

    warn_only: tuple[str, ...] = Field(
        (), description="expectations downgraded to warnings: 'type' or 'type:column'"
    )
    min_images_per_class: int = Field(5, ge=1)
    min_side: int = Field(4, ge=1, description="smallest width or height accepted, in pixels")
    max_side: int = Field(4096, ge=1, description="largest width or height accepted, in pixels")
    min_intensity_std: float = Field(
        1.0, ge=0.0, description="per-image std of 0-255 values; blank images fall below"
    )
    mean_intensity: tuple[float, float] = Field(
        (1.0, 254.0), description="bounds of the per-image mean of 0-255 values"
    )

    @model_validator(mode="after")
    def _bounds_ordered(self) -> ValidationParams:
        if self.min_side > self.max_side:
            raise ValueError("min_side must not exceed max_side")
        low, high = self.mean_intensity
        if not 0.0 <= low <= high <= 255.0:
            raise ValueError("mean_intensity must be [low, high] within 0..255")
        return self


class ModelParams(_Section):
    arch: str = Field("resnet10t", min_length=1, description="any timm model name")


class TrainParams(_Section):
    """One training loop's knobs, shared by pretraining and fine-tuning."""

    epochs: int = Field(ge=1, le=1000)
    batch_size: int = Field(128, ge=1, le=8192)
    optimizer: str = Field("adamw", description="timm create_optimizer_v2 name")
    lr: float = Field(1e-3, gt=0.0, le=10.0)
    weight_decay: float = Field(0.05, ge=0.0, le=1.0)
    scheduler: str = Field("cosine", description="timm create_scheduler_v2 name")
    warmup_epochs: int = Field(0, ge=0)
    augment_shift: int = Field(0, ge=0, le=8, description="random translation, in pixels")
    min_steps: int = Field(
        0,
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
        8, ge=2, description="downsample source images to this size first (match the target)"
    )
    source_fit_frame: bool = Field(
        True,
        description="crop source images to their foreground and scale it to fill the frame "
        "(size normalisation, as the target's digits were made)",
    )
    checkpoint_file: str | None = Field(
        None,
        description="start from a local timm checkpoint (pretrained_cfg_overlay file=...); "
        "in_chans and num_classes are adapted by timm; relative to the project",
    )


class TransferParams(TrainParams):
    strategies: tuple[Strategy, ...] = STRATEGIES
    source: Literal["pretrain", "auto"] = Field(
        "pretrain",
        description="pretrain: the pretrain stage's model; auto: rank rank.candidates on the "
        "target and transfer from the top one (tasks/transferability/sources.py)",
    )
    layer_decay: float | None = Field(0.75, gt=0.0, le=1.0, description="full: per-layer LR decay")
    scratch_lr: float = Field(3e-3, gt=0.0, le=10.0, description="lr of the scratch baseline")
    keep_head: bool = Field(
        True, description="keep the source classifier when source and target classes match"
    )
    freeze_stages: int = Field(
        2,
        ge=1,
        le=32,
        description="partial: freeze the first N layer groups (the stem is the first)",
    )
    probe_c: float = Field(1.0, gt=0.0, description="linear_probe/lp_ft: inverse L2 strength")
    l2sp_alpha: float = Field(0.01, ge=0.0, description="l2sp: pull toward the source weights")
    l2sp_beta: float = Field(0.01, ge=0.0, description="l2sp: L2 on the new head")
    adapt_weight: float = Field(1.0, ge=0.0, description="dann/mmd: weight of the domain term")
    multitask_weight: float = Field(1.0, ge=0.0, description="multitask: source-task loss weight")
    patience: int | None = Field(
        10, ge=1, description="early stopping on val accuracy; null = fixed epochs"
    )
    min_val_for_early_stopping: int = Field(
        20, ge=1, description="fewer val images than this: fixed epochs (too noisy to stop on)"
    )
    min_train_for_early_stopping: int = Field(
        100, ge=1, description="fewer labelled train images: fixed epochs (few steps per epoch)"
    )
    resume: bool = Field(True, description="continue a killed run from its last epoch")

    @model_validator(mode="after")
    def _strategies_ok(self) -> TransferParams:
        if not self.strategies:
            raise ValueError("strategies must name at least one strategy")
        if len(set(self.strategies)) != len(self.strategies):
            raise ValueError("strategies must not repeat")
        return self


class EvaluateParams(_Section):
    select_on: Literal["val", "test"] = Field(
        "val", description="split the best candidate is chosen on (val keeps test honest)"
    )
    ece_bins: int = Field(15, ge=2, le=100)
    negative_transfer_margin: float | None = Field(
        None, ge=0.0, description="gain below -margin flags negative transfer; null = 2 std errors"
    )
    forgetting: bool = Field(True, description="linear-probe each backbone on the source task")
    forgetting_train_images: int = Field(1000, ge=10, description="source train images probed")


class RegistryParams(_Section):
    model_name: str = Field("tlp-digits", min_length=1)
    challenger_alias: str = "challenger"
    champion_alias: str = "champion"


class PromoteParams(_Section):
    """The promotion gate: a candidate must beat the champion with statistical support."""

    alpha: float = Field(0.05, gt=0.0, lt=1.0, description="significance of the McNemar test")
    min_delta: float = Field(0.0, ge=0.0, le=1.0, description="least test-accuracy gain")
    min_accuracy: float = Field(
        0.5, ge=0.0, le=1.0, description="absolute floor on test accuracy, champion or not"
    )
    previous_alias: str = "previous_champion"
    retries: int = Field(3, ge=0, le=10, description="retries of transient tracking errors")
    retry_delay: float = Field(1.0, ge=0.0, le=60.0, description="first backoff, in seconds")


class ScheduleParams(_Section):
    """When ``tlp serve`` runs the pipeline; read only by the scheduler, never by a stage."""

    cron: str = Field("0 2 * * *", min_length=1, description="five-field cron expression")
    timezone: str = Field("UTC", description="IANA time zone the cron is read in")
    profile: str = Field("default", min_length=1, description="params profile of scheduled runs")
    deployment: str = Field("scheduled", min_length=1, description="Prefect deployment name")
    concurrency_limit: int = Field(1, ge=1, le=64, description="runs of it at the same time")
    collision_strategy: Literal["ENQUEUE", "CANCEL_NEW"] = Field(
        "ENQUEUE", description="a run due while the limit is reached waits or is skipped"
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


class CandidateParams(_Section):
    """One candidate source for ``tlp rank`` and ``transfer.source: auto``."""

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


class RankParams(_Section):
    """Transferability ranking of candidate sources (tasks/transferability/)."""

    candidates: tuple[CandidateParams, ...] = ()
    score: Score = Field("logme", description="the score transfer.source: auto picks by")
    batch_size: int = Field(256, ge=1, le=8192, description="images per forward pass")

    @model_validator(mode="after")
    def _unique_names(self) -> RankParams:
        names = [c.name for c in self.candidates]
        if len(set(names)) != len(names):
            raise ValueError("candidate names must not repeat (give each a name:)")
        return self


class Params(_Section):
    base: BaseParams
    data: DataParams
    preprocess: PreprocessParams
    model: ModelParams
    pretrain: PretrainParams
    transfer: TransferParams
    evaluate: EvaluateParams
    registry: RegistryParams
    validation: ValidationParams = ValidationParams()
    promote: PromoteParams = PromoteParams()
    schedule: ScheduleParams = ScheduleParams()
    rank: RankParams = RankParams()

    @model_validator(mode="after")
    def _auto_needs_candidates(self) -> Params:
        if self.transfer.source == "auto" and not self.rank.candidates:
            raise ValueError("transfer.source: auto needs rank.candidates to choose from")
        return self

    def digest(self) -> str:
        """Stable hash of every value; tags each run and registered version."""
        blob = json.dumps(self.model_dump(mode="json"), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


def parse_override(text: str) -> tuple[list[str], Any]:
    """``section.key=value`` -> (["section", "key"], value parsed as YAML)."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ParamsError(f"--set {text!r}: expected section.key=value")
    keys = key.strip().split(".")
    if any(not k for k in keys):
        raise ParamsError(f"--set {text!r}: empty key in {key!r}")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as exc:
        raise ParamsError(f"--set {key}: value {raw!r} is not valid YAML ({exc})") from exc
    return keys, value


# Keys that exclude each other: setting one (profile or --set) drops the other, so
# ``--set data.target.path=DIR`` alone switches the target from its built-in to DIR.
EXCLUSIVE_KEYS = {("data", "source"): ("builtin", "path"), ("data", "target"): ("builtin", "path")}


def _drop_replaced(tree: dict[str, Any], keys: list[str], value: Any) -> None:
    parent, leaf = tuple(keys[:-1]), keys[-1]
    group = EXCLUSIVE_KEYS.get(parent)
    if group is None or leaf not in group or value is None:
        return
    node = tree
    for key in parent:
        node = node.get(key) if isinstance(node, dict) else None
    if isinstance(node, dict):
        for other in group:
            if other != leaf:
                node.pop(other, None)


def _apply(tree: dict[str, Any], keys: list[str], value: Any, origin: str) -> None:
    node = tree
    for depth, key in enumerate(keys[:-1]):
        child = node.get(key)
        if child is None:
            child = node[key] = {}
        if not isinstance(child, dict):
            where = ".".join(keys[: depth + 1])
            raise ParamsError(f"{origin}: {where} is a value, not a section")
        node = child
    node[keys[-1]] = value


def _merge(tree: dict[str, Any], overrides: dict[str, Any], origin: str, prefix=()) -> None:
    for key, value in overrides.items():
        path = [*prefix, key]
        if isinstance(value, dict) and isinstance(tree.get(key), dict):
            _merge(tree[key], value, origin, path)
        else:
            _apply(tree, [key], copy.deepcopy(value), origin)
            group = EXCLUSIVE_KEYS.get(tuple(prefix), ())
            if key in group and value is not None:
                for other in group:
                    if other != key:
                        tree.pop(other, None)


def _format_errors(exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"] if not str(p).startswith("function-"))
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        got = err.get("input")
        shown = (
            ""
            if err["type"] in ("extra_forbidden", "missing") or isinstance(got, dict)
            else f" (got {got!r})"
        )
        lines.append(f"{loc or 'params'}: {msg}{shown}")
    return "; ".join(lines)


def read_params_file(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ParamsError(f"{path}: params file not found")
    try:
        tree = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ParamsError(f"{path}: not valid YAML ({exc})") from exc
    if not isinstance(tree, dict):
        raise ParamsError(f"{path}: expected a mapping of sections")
    return tree


# Remotes set by the environment (a worker's or a container's), between profile and --set.
ENV_OVERRIDES = {
    "TLP_TRACKING_URI": ("base", "tracking_uri"),
    "TLP_DVC_REMOTE": ("base", "dvc_remote"),
    "TLP_DVC_REMOTE_ENDPOINT": ("base", "dvc_remote_endpoint"),
}


def environment_overrides() -> list[tuple[list[str], str]]:
    """``TLP_TRACKING_URI`` etc. as (keys, value) pairs, for the variables that are set."""
    import os

    return [(list(k), os.environ[var]) for var, k in ENV_OVERRIDES.items() if os.environ.get(var)]


def resolve_params(
    params_file: Path, profile: str = DEFAULT_PROFILE, overrides: list[str] | tuple[str, ...] = ()
) -> Params:
    """Load params.yaml, apply a profile and ``--set`` overrides, validate the result."""
    tree = read_params_file(params_file)
    profiles = tree.pop("profiles", None) or {}
    if profile != DEFAULT_PROFILE:
        if profile not in profiles:
            known = ", ".join([DEFAULT_PROFILE, *profiles]) or DEFAULT_PROFILE
            raise ParamsError(f"profile {profile!r} is not in {params_file.name} (known: {known})")
        _merge(tree, profiles[profile] or {}, f"profiles.{profile}")
    for keys, value in environment_overrides():
        _apply(tree, keys, value, "environment")
    _apply_overrides(tree, overrides, "--set")
    try:
        return Params.model_validate(tree)
    except ValidationError as exc:
        raise ParamsError(_format_errors(exc)) from None


def _apply_overrides(tree: dict, overrides: list[str] | tuple[str, ...], origin: str) -> None:
    """Apply ``section.key=value`` overrides to a raw params tree, in order."""
    for text in overrides:
        keys, value = parse_override(text)
        _apply(tree, keys, value, f"{origin} {text}")
        _drop_replaced(tree, keys, value)


def load_resolved(project_dir: Path) -> Params:
    """Params a stage runs with: the resolved file, or the default profile if none yet."""
    resolved = project_dir / RESOLVED_PARAMS_FILE
    if resolved.is_file():
        return resolve_params(resolved)
    params = resolve_params(project_dir / PARAMS_FILE)
    write_resolved(params, project_dir)
    return params


def resolved_text(params: Params) -> str:
    """The contents of params.resolved.yaml for ``params``."""
    text = "# Written by tlp from params.yaml + profile + --set. Do not edit; DVC reads it.\n"
    return text + yaml.safe_dump(params.model_dump(mode="json"), sort_keys=False)


def with_overrides(params: Params, overrides: list[str] | tuple[str, ...], origin: str) -> Params:
    """``params`` with ``--set``-style overrides applied, validated again."""
    tree = params.model_dump(mode="json")
    _apply_overrides(tree, overrides, f"{origin}:")
    try:
        return Params.model_validate(tree)
    except ValidationError as exc:
        raise ParamsError(f"{origin}: {_format_errors(exc)}") from None


def write_resolved(params: Params, project_dir: Path) -> Path:
    """Write the resolved tree only when it changed, so DVC sees no spurious edits."""
    path = project_dir / RESOLVED_PARAMS_FILE
    text = resolved_text(params)
    if not path.is_file() or path.read_text() != text:
        path.write_text(text)
    return path
