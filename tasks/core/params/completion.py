"""Fill what params leave to the source model: ``model.arch`` and null ``preprocess`` values.

A pretrained model expects its inputs the way it was trained: size, mean and std,
interpolation and channels. timm carries that with every architecture (``pretrained_cfg``),
and a tlp checkpoint carries it in its card (``meta.json``). So a ``preprocess`` value left
null in params.yaml is taken from the source model named by ``pretrain.checkpoint`` when
params are resolved, and params.resolved.yaml, the params hash and DVC hold concrete values:
no stage, checkpoint or served model ever sees a null. A value params set always wins.

Where the configuration comes from, by ``pretrain.checkpoint`` (and what ``model.arch`` becomes):

- null (the source is trained here): timm's ``pretrained_cfg`` of ``model.arch`` (kept);
- a built-in name: timm's configuration of the built-in's architecture (``model.arch``
  becomes that architecture);
- a weights file: timm's configuration of ``model.arch`` (kept: the file loads into it);
- a tlp checkpoint folder, or ``models:/NAME@ALIAS`` / ``models:/NAME/VERSION``: the card of
  that checkpoint or registered version (``model.arch`` becomes the card's);
- ``hub:NAME``: timm's configuration of NAME, static in timm, so nothing downloads here
  (``model.arch`` becomes its architecture).

timm and MLflow are imported only when something needs them (a null to fill, a card in the
registry), so the digits default, whose values are all set, resolves without either.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError

from tasks.core.params.checkpoints import BUILTIN_CHECKPOINTS, CheckpointSpec, parse_checkpoint
from tasks.core.params.section import ParamsError
from tasks.core.params.training import ModelParams, PreprocessParams
from tasks.core.params.tree import Params

log = logging.getLogger(__name__)

CARD = "meta.json"  # a tlp checkpoint's card (tasks.modeling.models.CARD, a layer above)
PREPROCESS_KEYS = tuple(PreprocessParams.model_fields)
# timm's pretrained configurations name bilinear or bicubic (nearest is ours); any other
# PIL filter a configuration might name (lanczos, hamming, box) is a smooth one, and of the
# modes preprocess() offers, antialiased bicubic is the closest to it
SMOOTH_FALLBACK = "bicubic"


@dataclass(frozen=True)
class SourceConfig:
    """How the source model takes its inputs, and where that was read."""

    arch: str
    channels: int
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    interpolation: str
    origin: str  # for the log line and error messages: "timm pretrained_cfg of resnet10t"


def complete_params(params: Params, project_dir: Path) -> Params:
    """``params`` with ``model.arch`` and every null ``preprocess`` value from the source
    model's configuration; unchanged (and nothing imported) when there is nothing to fill."""
    spec = _checkpoint(params)
    brings_arch = _brings_arch(spec, project_dir)
    if params.preprocess.complete and not brings_arch:
        return params
    if params.preprocess.complete and spec.kind == "builtin":  # known without timm
        arch = BUILTIN_CHECKPOINTS[spec.value].arch
        return _completed(params, params.preprocess, arch, f"built-in checkpoint {spec.value}")
    source = source_config(params, spec, project_dir)
    preprocess = _fill_preprocess(params.preprocess, source)
    return _completed(params, preprocess, source.arch if brings_arch else None, source.origin)


def _completed(params: Params, pre: PreprocessParams, arch: str | None, origin: str) -> Params:
    """``params`` with ``pre`` and ``arch`` (None: as set), and one log line of what came
    from ``origin``."""
    arch = arch or params.model.arch
    filled = [
        f"{k}={getattr(pre, k)}" for k in PREPROCESS_KEYS if getattr(params.preprocess, k) is None
    ]
    if arch != params.model.arch:
        filled.insert(0, f"model.arch={arch}")
    if not filled:
        return params
    log.info("params from %s: %s", origin, ", ".join(filled))
    return params.model_copy(update={"preprocess": pre, "model": ModelParams(arch=arch)})


def _checkpoint(params: Params) -> CheckpointSpec | None:
    text = params.pretrain.checkpoint
    return None if text is None else parse_checkpoint(text)


def _local_path(spec: CheckpointSpec, project_dir: Path) -> Path:
    return (project_dir / Path(spec.value).expanduser()).resolve()


def _brings_arch(spec: CheckpointSpec | None, project_dir: Path) -> bool:
    """A built-in, hub or registered checkpoint and a tlp checkpoint folder are an
    architecture; a bare weights file loads into ``model.arch``."""
    if spec is None:
        return False
    return spec.kind != "file" or _local_path(spec, project_dir).is_dir()


def source_config(params: Params, spec: CheckpointSpec | None, project_dir: Path) -> SourceConfig:
    """The source model's input configuration, for ``pretrain.checkpoint`` = ``spec``."""
    if spec is None:
        return timm_config(params.model.arch, "model.arch")
    if spec.kind == "builtin":
        arch = BUILTIN_CHECKPOINTS[spec.value].arch
        return timm_config(arch, "pretrain.checkpoint", f"built-in checkpoint {spec.value}")
    if spec.kind == "hub":
        return timm_config(spec.value, "pretrain.checkpoint")
    if spec.kind == "registry":
        uri = params.storage.tracking_uri
        return card_config(registered_card(spec.value, uri, project_dir), spec.value)
    path = _local_path(spec, project_dir)
    if path.is_dir():
        if not (path / CARD).is_file():
            raise ParamsError(
                f"pretrain.checkpoint: {path} is a folder without {CARD}; a tlp checkpoint "
                "folder holds model.safetensors and meta.json (or name a weights file)"
            )
        return card_config(_read_json(path / CARD), str(path / CARD))
    return timm_config(params.model.arch, "model.arch")


def timm_config(name: str, key: str, via: str = "") -> SourceConfig:
    """timm's pretrained configuration of ``name`` (an architecture, with or without a
    pretrained tag); static data, no model is built and nothing downloads."""
    from timm.models import get_pretrained_cfg, is_model

    if not is_model(name):
        raise ParamsError(
            f"{key}: {name!r} is not a timm model, so it has no pretrained configuration to "
            "fill preprocess from; name one timm.list_models() lists (e.g. resnet10t)"
        )
    try:
        cfg = get_pretrained_cfg(name, allow_unregistered=False)
    except RuntimeError as exc:  # a known architecture with an unknown pretrained tag
        raise ParamsError(f"{key}: {exc} (timm.list_pretrained() lists the tags)") from None
    channels, *_, size = cfg.input_size
    return SourceConfig(
        arch=cfg.architecture or name.partition(".")[0],
        channels=channels,
        image_size=size,
        mean=tuple(cfg.mean),
        std=tuple(cfg.std),
        interpolation=_interpolation(cfg.interpolation),
        origin=f"timm pretrained_cfg of {name}{f' ({via})' if via else ''}",
    )


def _interpolation(name: str) -> str:
    return name if name in ("bilinear", "bicubic", "nearest") else SMOOTH_FALLBACK


def card_config(card: dict, where: str) -> SourceConfig:
    """The configuration a tlp checkpoint card (``meta.json``) records."""
    try:
        arch = ModelParams(arch=card["arch"]).arch
        pre = PreprocessParams.model_validate({"interpolation": "bilinear", **card["preprocess"]})
    except (KeyError, TypeError, ValidationError) as exc:
        raise ParamsError(
            f"pretrain.checkpoint: {where} is not a tlp checkpoint card ({exc})"
        ) from None
    if not pre.complete:
        raise ParamsError(f"pretrain.checkpoint: {where} has null preprocess values")
    return SourceConfig(
        arch, pre.channels, pre.image_size, pre.mean, pre.std, pre.interpolation, f"card {where}"
    )


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ParamsError(f"pretrain.checkpoint: {path} cannot be read ({exc})") from None


def registered_card(uri: str, tracking_uri: str, project_dir: Path) -> dict:
    """The card of the version ``models:/NAME@ALIAS`` or ``models:/NAME/VERSION`` names, read
    from the project's MLflow store. Only ``meta.json`` is downloaded, not the weights."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    from tasks.core.params.storage import resolve_tracking_uri

    store = resolve_tracking_uri(tracking_uri, project_dir)
    if store.startswith("sqlite:///") and not Path(store.removeprefix("sqlite:///")).is_file():
        raise ParamsError(
            f"pretrain.checkpoint: {uri}: no MLflow store at {store} (register the model "
            "first, or point storage.tracking_uri or TLP_TRACKING_URI at its store)"
        )
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    client = MlflowClient(tracking_uri=store, registry_uri=store)
    name, _, ref = uri.removeprefix("models:/").partition("@")
    try:
        if ref:
            version = client.get_model_version_by_alias(name, ref)
        else:
            name, _, number = name.partition("/")
            version = client.get_model_version(name, number)
        return _download_card(client, version.source, store)
    except MlflowException as exc:
        raise ParamsError(f"pretrain.checkpoint: {uri}: {exc.message} (store {store})") from None


def _download_card(client, source: str, store: str) -> dict:
    """``meta.json`` under the model's ``artifacts/`` (the pyfunc's checkpoint artifact)."""
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    if source.startswith("models:/"):  # MLflow 3: a logged model
        source = client.get_logged_model(source.removeprefix("models:/")).artifact_location
    elif source.startswith("runs:/"):  # MLflow 2: a run's artifact path
        run_id, _, path = source.removeprefix("runs:/").partition("/")
        source = f"{client.get_run(run_id).info.artifact_uri}/{path}"
    repo = get_artifact_repository(source, tracking_uri=store)
    for folder in repo.list_artifacts("artifacts"):
        if folder.is_dir and any(f.path.endswith(CARD) for f in repo.list_artifacts(folder.path)):
            with tempfile.TemporaryDirectory() as tmp:
                return _read_json(Path(repo.download_artifacts(f"{folder.path}/{CARD}", tmp)))
    raise ParamsError(f"pretrain.checkpoint: {source} holds no {CARD}; not a tlp model?")


def _fill_preprocess(pre: PreprocessParams, source: SourceConfig) -> PreprocessParams:
    """Null values from ``source``; mean and std follow the channels finally used (averaged
    for a grey input to an RGB model, repeated for the reverse)."""
    channels = pre.channels if pre.channels is not None else source.channels
    values = {
        "image_size": pre.image_size if pre.image_size is not None else source.image_size,
        "channels": channels,
        "mean": pre.mean if pre.mean is not None else _per_channel(source.mean, channels),
        "std": pre.std if pre.std is not None else _per_channel(source.std, channels),
        "interpolation": pre.interpolation or source.interpolation,
    }
    try:
        return PreprocessParams.model_validate(values)
    except ValidationError as exc:
        problems = "; ".join(
            ".".join(["preprocess", *map(str, e["loc"])])
            + ": "
            + e["msg"].removeprefix("Value error, ")
            for e in exc.errors()
        )
        raise ParamsError(
            f"{problems} (channels={channels}; the values not set come from {source.origin}: "
            "set the others to match, or leave them null)"
        ) from None


def _per_channel(values: tuple[float, ...], channels: int) -> tuple[float, ...]:
    if len(values) == channels:
        return tuple(values)
    if channels == 1:
        return (round(sum(values) / len(values), 6),)
    return tuple(values) * channels if len(values) == 1 else tuple(values)
