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
    builtin: Literal["mnist5k", "uci-digits"]
    limit: int | None = Field(None, ge=10, description="stratified subsample before splitting")
    test_fraction: float = Field(0.2, gt=0.0, lt=1.0)
    val_per_class: int = Field(0, ge=0, description="labelled validation images per class")
    labels_per_class: int | None = Field(
        None, ge=1, description="labelled training images per class; null = all the rest"
    )


class DataParams(_Section):
    split_seed: int = Field(0, ge=0, description="fixes the test split independently of base.seed")
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

    @model_validator(mode="after")
    def _warmup_within_epochs(self) -> TrainParams:
        if self.warmup_epochs >= self.epochs and self.warmup_epochs > 0:
            raise ValueError("warmup_epochs must be smaller than epochs")
        return self


class PretrainParams(TrainParams):
    source_resolution: int | None = Field(
        8, ge=2, description="downsample source images to this size first (match the target)"
    )


class TransferParams(TrainParams):
    strategies: tuple[Literal["scratch", "full"], ...] = STRATEGIES
    layer_decay: float | None = Field(0.75, gt=0.0, le=1.0, description="full: per-layer LR decay")
    scratch_lr: float = Field(3e-3, gt=0.0, le=10.0, description="lr of the scratch baseline")
    keep_head: bool = Field(
        True, description="keep the source classifier when source and target classes match"
    )

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


class RegistryParams(_Section):
    model_name: str = Field("tlp-digits", min_length=1)
    challenger_alias: str = "challenger"
    champion_alias: str = "champion"


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


class Params(_Section):
    base: BaseParams
    data: DataParams
    preprocess: PreprocessParams
    model: ModelParams
    pretrain: PretrainParams
    transfer: TransferParams
    evaluate: EvaluateParams
    registry: RegistryParams
    schedule: ScheduleParams = ScheduleParams()

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


def _merge(tree: dict[str, Any], overrides: dict[str, Any]) -> None:
    """Deep-merge a profile's overrides into the params tree."""
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(tree.get(key), dict):
            _merge(tree[key], value)
        else:
            tree[key] = copy.deepcopy(value)


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
        _merge(tree, profiles[profile] or {})
    for keys, value in environment_overrides():
        _apply(tree, keys, value, "environment")
    for text in overrides:
        keys, value = parse_override(text)
        _apply(tree, keys, value, f"--set {text}")
    try:
        return Params.model_validate(tree)
    except ValidationError as exc:
        raise ParamsError(_format_errors(exc)) from None


def load_resolved(project_dir: Path) -> Params:
    """Params a stage runs with: the resolved file, or the default profile if none yet."""
    resolved = project_dir / RESOLVED_PARAMS_FILE
    if resolved.is_file():
        return resolve_params(resolved)
    params = resolve_params(project_dir / PARAMS_FILE)
    write_resolved(params, project_dir)
    return params


def write_resolved(params: Params, project_dir: Path) -> Path:
    """Write the resolved tree only when it changed, so DVC sees no spurious edits."""
    path = project_dir / RESOLVED_PARAMS_FILE
    text = "# Written by tlp from params.yaml + profile + --set. Do not edit; DVC reads it.\n"
    text += yaml.safe_dump(params.model_dump(mode="json"), sort_keys=False)
    if not path.is_file() or path.read_text() != text:
        path.write_text(text)
    return path
