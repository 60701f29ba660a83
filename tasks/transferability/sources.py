"""Candidate sources: resolve, load, score on the labelled target train split, rank, choose.

A candidate is a checkpoint folder (``model.safetensors`` + ``meta.json``), a local timm
checkpoint file (``arch`` from the candidate or ``model.arch``), a registered model
(``models:/NAME@ALIAS`` or ``models:/NAME/VERSION``: its checkpoint artifact), or a source
this project pretrains itself with ``--set``-style overrides (cached in ``.tlp/sources/``,
keyed on everything that shapes it). Every candidate is scored with the same preprocessing
the transfer stage will use (``preprocess``), so the ranking is about the model, not about
how its inputs were made. Scoring and ranking them is ``ranking``; the pretrain stage's
automatic choice is ``selection``.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from tasks.core.context import WORK_DIR, StageContext
from tasks.core.params import CandidateParams, Params, with_overrides
from tasks.core.params.checkpoints import parse_checkpoint
from tasks.modeling.models import CARD, WEIGHTS, ModelCard

# flows/cli.py and flows/pipeline.py import the tables from here

SOURCES_DIR = "sources"  # under WORK_DIR


class SourceError(ValueError):
    """A candidate cannot be used; the message names it and the problem."""


@dataclass
class Source:
    """A loaded candidate: the model (eval mode) and what its head predicts, if it has one."""

    name: str
    origin: str  # checkpoint | timm-file | registry | pretrain
    location: str
    model: torch.nn.Module
    card: ModelCard  # for a timm file: classes are the head's indices ("0", "1", ...)

    @property
    def has_head(self) -> bool:
        return self.card.num_classes > 0


def slug(name: str) -> str:
    """A name usable in file names and MLflow metric keys."""
    return re.sub(r"[^A-Za-z0-9_-]+", "_", name).strip("_-") or "candidate"


def _fail(spec: CandidateParams, problem: str) -> SourceError:
    return SourceError(f"candidate {spec.name!r}: {problem}")


# ---- checking (cheap, before any work) -------------------------------------------------


def local_path(spec: CandidateParams, project_dir: Path) -> Path:
    return (project_dir / Path(spec.path).expanduser()).resolve()


def check_candidate(spec: CandidateParams, params: Params, project_dir: Path) -> None:
    """Fail fast on what can be seen without loading weights: missing files, wrong channels,
    overrides that do not validate."""
    if spec.pretrain is not None:
        candidate_params(params, spec, project_dir)
        return
    if spec.path.startswith("models:/"):
        if not re.fullmatch(r"models:/[^/@]+(@[^/@]+|/\d+)", spec.path):
            raise _fail(spec, f"{spec.path}: expected models:/NAME@ALIAS or models:/NAME/VERSION")
        return
    path = local_path(spec, project_dir)
    if not path.exists():
        raise _fail(spec, f"{path} not found")
    if path.is_dir():
        _check_card(spec, path, params)
    else:
        arch = spec.arch or params.model.arch
        try:
            _head_size(arch, path)
        except Exception as exc:  # whatever the file is, it is not a usable checkpoint
            raise _fail(spec, f"{path} is not a readable timm checkpoint file ({exc})") from None


def _check_card(spec: CandidateParams, ckpt: Path, params: Params) -> ModelCard:
    from tasks.modeling.models import read_card

    if not (ckpt / CARD).is_file() or not (ckpt / WEIGHTS).is_file():
        raise _fail(spec, f"{ckpt} is not a checkpoint folder ({WEIGHTS} + {CARD})")
    try:
        card = read_card(ckpt)
    except ValueError as exc:
        raise _fail(spec, f"{ckpt / CARD} is not a valid checkpoint card ({exc})") from None
    want = params.preprocess.channels
    if card.preprocess.channels != want:
        raise _fail(
            spec,
            f"{ckpt} takes {card.preprocess.channels}-channel images, the target is "
            f"preprocessed to {want} (preprocess.channels)",
        )
    return card


# ---- pretraining a candidate ------------------------------------------------------------


def candidate_params(params: Params, spec: CandidateParams, project_dir: Path) -> Params:
    from tasks.core.params import ParamsError

    try:
        return with_overrides(params, spec.pretrain or (), f"candidate {spec.name!r}", project_dir)
    except ParamsError as exc:
        raise SourceError(str(exc)) from None


def pretrain_key(params: Params) -> str:
    """Everything that shapes a pretrained source (not the target, not the transfer)."""
    p = params.model_dump(mode="json")
    shaping = {
        "seed": p["base"]["seed"],
        "source": p["data"]["source"],
        "split_seed": p["data"]["split_seed"],
        "model": p["model"],
        "preprocess": p["preprocess"],
        "pretrain": p["pretrain"],
    }
    return hashlib.sha256(json.dumps(shaping, sort_keys=True).encode()).hexdigest()[:16]


def pretrain_candidate(
    ctx: StageContext,
    spec: CandidateParams,
    after_prepare: Callable[[Path], None] | None = None,
) -> Path:
    """Pretrain ``spec`` in a project of its own under ``.tlp/sources/`` (reused when done);
    returns its checkpoint folder. ``after_prepare(data_dir)`` may edit the prepared source
    data first (the benchmark's random-label control)."""
    from tasks.data.datasets import prepare_dataset
    from tasks.modeling import pretraining as pretrain

    params = candidate_params(ctx.params, spec, ctx.project_dir)
    checkpoint = params.pretrain.checkpoint
    if checkpoint is not None and parse_checkpoint(checkpoint).kind == "file":
        file = str((ctx.project_dir / checkpoint).resolve())  # relative to the real project
        params = with_overrides(params, [f"pretrain.checkpoint={file}"], spec.name)
    tag = "shuffled-" if after_prepare else ""
    home = (
        ctx.project_dir / WORK_DIR / SOURCES_DIR / f"{slug(spec.name)}-{tag}{pretrain_key(params)}"
    )
    sub = StageContext(home, params, ctx.experiment_id, ctx.tracking_uri, ctx.parent_run_id)
    if (sub.layout.source_model / CARD).is_file():
        return sub.layout.source_model
    p = params.data
    prepare_dataset(
        p.source,
        p.split_seed,
        sub.layout.source_data,
        "source",
        p.max_image_pixels,
        ctx.project_dir,
    )
    if after_prepare is not None:
        after_prepare(sub.layout.source_data)
    pretrain.train_source(sub)
    return sub.layout.source_model


# ---- loading ----------------------------------------------------------------------------


def _head_size(arch: str, file: Path) -> int:
    """Rows of the classifier in a timm checkpoint file; 0 when it holds no classifier."""
    import timm

    classifier = timm.create_model(arch, pretrained=False).pretrained_cfg.get("classifier", "fc")
    if file.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(file), "pt") as fh:
            key = f"{classifier}.weight"
            return fh.get_slice(key).get_shape()[0] if key in set(fh.keys()) else 0
    state = torch.load(file, map_location="cpu", weights_only=True)
    for nested in ("state_dict", "model"):
        if isinstance(state, dict) and nested in state:
            state = state[nested]
    weight = state.get(f"{classifier}.weight") if isinstance(state, dict) else None
    return int(weight.shape[0]) if weight is not None else 0


def _load_timm_file(spec: CandidateParams, file: Path, params: Params) -> Source:
    import timm

    arch = spec.arch or params.model.arch
    try:
        n = _head_size(arch, file)
        model = timm.create_model(
            arch,
            pretrained=True,
            pretrained_cfg_overlay={"file": str(file), "num_classes": n},
            num_classes=n,
            in_chans=params.preprocess.channels,
        )
    except Exception as exc:  # timm raises RuntimeError, the readers their own errors
        raise _fail(spec, f"{file} does not load as a timm {arch} checkpoint: {exc}") from None
    card = ModelCard(
        arch=arch, classes=tuple(str(i) for i in range(n)), preprocess=params.preprocess
    )
    return Source(spec.name, "timm-file", str(file), model.eval(), card)


def _load_folder(spec: CandidateParams, ckpt: Path, params: Params, origin: str) -> Source:
    from safetensors.torch import load_model

    from tasks.modeling.models import create_model

    card = _check_card(spec, ckpt, params)
    model = create_model(card.arch, card.num_classes, card.preprocess.channels)
    try:
        load_model(model, str(ckpt / WEIGHTS))
    except (RuntimeError, OSError) as exc:
        raise _fail(
            spec,
            f"{ckpt / WEIGHTS} does not fit its card ({card.arch}, "
            f"{card.num_classes} classes): {exc}",
        ) from None
    return Source(spec.name, origin, str(ckpt), model.eval(), card)


def _download_registered(spec: CandidateParams, dst: Path) -> Path:
    import mlflow
    from mlflow.exceptions import MlflowException

    if dst.exists():
        shutil.rmtree(dst)
    dst.mkdir(parents=True)
    try:
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=spec.path, dst_path=str(dst)))
    except MlflowException as exc:
        raise _fail(spec, f"{spec.path}: {exc.message}") from None
    cards = sorted(local.rglob(CARD))
    if not cards:
        raise _fail(spec, f"{spec.path} holds no checkpoint ({CARD}); not a tlp model?")
    return cards[0].parent


def load_source(ctx: StageContext, spec: CandidateParams) -> Source:
    """Load one candidate, pretraining it first when it is a ``pretrain:`` candidate."""
    params = ctx.params
    check_candidate(spec, params, ctx.project_dir)
    if spec.pretrain is not None:
        return _load_folder(spec, pretrain_candidate(ctx, spec), params, "pretrain")
    if spec.path.startswith("models:/"):
        dst = ctx.project_dir / WORK_DIR / SOURCES_DIR / "registry" / slug(spec.path)
        return _load_folder(spec, _download_registered(spec, dst), params, "registry")
    path = local_path(spec, ctx.project_dir)
    if path.is_dir():
        return _load_folder(spec, path, params, "checkpoint")
    return _load_timm_file(spec, path, params)
