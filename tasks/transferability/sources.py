"""Candidate sources: resolve, load, score on the labelled target train split, rank, choose.

A candidate's ``path:`` is anything ``pretrain.checkpoint`` takes, loaded by the same code
(``tasks.modeling.checkpoints``): a checkpoint folder (``model.safetensors`` + ``meta.json``),
a local timm checkpoint file (``arch`` from the candidate or ``model.arch``), a built-in
pretrained model (``efficientnet-lite0``), a registered model (``models:/NAME@ALIAS`` or
``models:/NAME/VERSION``: its checkpoint artifact), a timm hub name (``hub:NAME``, with
``pretrain.allow_download``); or the candidate is a source this project pretrains itself with
``--set``-style overrides (cached in ``.tlp/sources/``, keyed on everything that shapes it).
Every candidate is scored with the same preprocessing the transfer stage will use
(``preprocess``), so the ranking is about the model, not about how its inputs were made.
Scoring and ranking them is ``ranking``; the pretrain stage's automatic choice is
``selection``.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from tasks.core.context import WORK_DIR, StageContext
from tasks.core.params import CandidateParams, Params, with_overrides
from tasks.core.params.checkpoints import CheckpointSpec, parse_checkpoint
from tasks.modeling import checkpoints
from tasks.modeling.checkpoints import CheckpointError
from tasks.modeling.models import CARD, WEIGHTS, ModelCard

# flows/cli.py and flows/pipeline.py import the tables from here

SOURCES_DIR = "sources"  # under WORK_DIR


class SourceError(ValueError):
    """A candidate cannot be used; the message names it and the problem."""


@dataclass
class Source:
    """A loaded candidate: the model (eval mode) and what its head predicts, if it has one."""

    name: str
    origin: str  # checkpoint | timm-file | builtin | hub | registry | pretrain
    location: str
    model: torch.nn.Module
    card: ModelCard  # for a timm file: classes are the head's indices ("0", "1", ...)
    record: dict | None = None  # the checkpoint's verification record (not for ``pretrain:``)

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


ORIGINS = {"builtin": "builtin", "hub": "hub", "file": "timm-file", "registry": "registry"}


def checkpoint_spec(spec: CandidateParams) -> CheckpointSpec:
    """What a ``path:`` candidate names, in ``pretrain.checkpoint``'s grammar."""
    try:
        return parse_checkpoint(spec.path)
    except ValueError as exc:
        raise _fail(spec, str(exc)) from None


def check_candidate(spec: CandidateParams, params: Params, project_dir: Path) -> None:
    """Fail fast on what can be seen without loading weights: missing files, wrong channels
    or architecture, overrides that do not validate, a hub name without allow_download."""
    if spec.pretrain is not None:
        candidate_params(params, spec, project_dir)
        return
    cspec = checkpoint_spec(spec)
    if cspec.kind == "registry":
        return
    if cspec.kind == "hub":
        if not params.pretrain.allow_download:
            raise _fail(
                spec,
                f"{spec.path} downloads weights from the hub; set pretrain.allow_download=true "
                "to allow the network",
            )
        return
    if cspec.kind == "file" and local_path(spec, project_dir).is_dir():
        _check_card(spec, local_path(spec, project_dir), params)
        return
    try:
        located = checkpoints.locate(cspec, spec.arch or params.model.arch, project_dir)
        fix = "give the candidate's arch:" if cspec.kind == "file" else "it is damaged"
        checkpoints.verify(checkpoints.read_shapes(located), located.arch, located.file, fix)
    except CheckpointError as exc:
        raise _fail(spec, str(exc)) from None


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
    from tasks.transferability.pretrained import make_source

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
    if checkpoint is not None and not params.pretrain.train_on_source:
        make_source(sub)  # a checkpoint as it is: no source data needed
        return sub.layout.source_model
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
    make_source(sub)
    return sub.layout.source_model


# ---- loading ----------------------------------------------------------------------------


def _load_folder(spec: CandidateParams, ckpt: Path, params: Params, origin: str, location=None):
    """A checkpoint folder (its own card: arch, classes, preprocessing) as a source."""
    card = _check_card(spec, ckpt, params)
    kind = CheckpointSpec("registry", spec.path) if origin == "registry" else None
    try:
        loaded = checkpoints.load(
            kind or CheckpointSpec("file", str(ckpt)),
            card.arch,
            card.preprocess.channels,
            ckpt.parent,  # unused: the folder's path is absolute
            folder=ckpt,
            location=location,
        )
    except CheckpointError as exc:
        raise _fail(spec, str(exc)) from None
    return Source(spec.name, origin, location or str(ckpt), loaded.model, card, loaded.record)


def load_source(ctx: StageContext, spec: CandidateParams) -> Source:
    """Load one candidate, pretraining it first when it is a ``pretrain:`` candidate."""
    from tasks.transferability.pretrained import fetch_registered, registry_dir

    params = ctx.params
    check_candidate(spec, params, ctx.project_dir)
    if spec.pretrain is not None:
        return _load_folder(spec, pretrain_candidate(ctx, spec), params, "pretrain")
    cspec = checkpoint_spec(spec)
    if cspec.kind == "registry":
        try:
            folder, location = fetch_registered(spec.path, registry_dir(ctx.project_dir, spec.path))
        except CheckpointError as exc:
            raise _fail(spec, str(exc)) from None
        return _load_folder(spec, folder, params, "registry", location)
    if cspec.kind == "file" and local_path(spec, ctx.project_dir).is_dir():
        return _load_folder(spec, local_path(spec, ctx.project_dir), params, "checkpoint")
    arch = spec.arch or params.model.arch
    try:
        loaded = checkpoints.load(cspec, arch, params.preprocess.channels, ctx.project_dir)
    except CheckpointError as exc:
        raise _fail(spec, str(exc)) from None
    card = ModelCard(arch=loaded.arch, classes=loaded.classes, preprocess=params.preprocess)
    location = loaded.record["location"]
    return Source(spec.name, ORIGINS[cspec.kind], location, loaded.model, card, loaded.record)
