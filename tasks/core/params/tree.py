"""The whole params tree: one field per section of params.yaml, and its hash."""

from __future__ import annotations

import hashlib
import json
import re
from typing import Literal

from pydantic import Field, field_validator, model_validator

from tasks.core.params.data import SOURCE_MATCHING, DataParams, ValidationParams
from tasks.core.params.names import MAX_SEED, check_experiment_name
from tasks.core.params.release import (
    EvaluateParams,
    ExportParams,
    PromoteParams,
    RankParams,
    RegistryParams,
    ScheduleParams,
)
from tasks.core.params.scaling import EngineParams, SearchParams
from tasks.core.params.section import Section
from tasks.core.params.storage import StorageParams
from tasks.core.params.training import (
    SELF_SUPERVISED,
    SOURCE_USING_STRATEGIES,
    ModelParams,
    PreprocessParams,
    PretrainParams,
    TransferParams,
    check_augmentations,
)

MODEL_PREFIX = "tlp-"


def derived_model_name(builtin: str | None, path: str | None) -> str | None:
    """``tlp-<slug>`` of a target: the built-in's name, or the folder's base name, lowercased,
    each run of characters outside [a-z0-9-] replaced by one '-' (valid for MLflow and in a
    URI). None when neither is given (the data section reports that)."""
    if path:
        from pathlib import Path

        folder = Path(str(path)).expanduser()
        stem = folder.name or folder.resolve().name
    elif builtin:
        stem = str(builtin)
    else:
        return None
    slug = re.sub(r"[^a-z0-9-]+", "-", stem.lower()).strip("-")
    return MODEL_PREFIX + (slug or "target")


# Sections that say where things are kept or run, not what a run computes: not in the hash.
UNHASHED_SECTIONS = frozenset({"storage", "engine"})


class BaseParams(Section):
    seed: int = Field(
        ge=0, le=MAX_SEED, description="seed for training, shuffling and augmentation"
    )
    device: Literal["cpu", "cuda", "auto"]
    threads: int = Field(ge=1, le=256, description="torch intra-op threads")
    experiment: str = Field(min_length=1, description="MLflow experiment of the runs")

    _experiment_name = field_validator("experiment")(check_experiment_name)


class Params(Section):
    base: BaseParams
    storage: StorageParams
    data: DataParams
    preprocess: PreprocessParams
    validation: ValidationParams
    model: ModelParams
    pretrain: PretrainParams
    transfer: TransferParams
    search: SearchParams
    engine: EngineParams
    evaluate: EvaluateParams
    registry: RegistryParams
    export: ExportParams
    promote: PromoteParams
    rank: RankParams
    schedule: ScheduleParams

    @model_validator(mode="before")
    @classmethod
    def _resolve_source_matching(cls, tree):
        """``auto`` source matching becomes what the target declares (SOURCE_MATCHING), so
        the resolved params, the hash and DVC hold the values the stages use."""
        if not isinstance(tree, dict):
            return tree
        pretrain, data = tree.get("pretrain"), tree.get("data")
        if not isinstance(pretrain, dict) or not isinstance(data, dict):
            return tree
        target = data.get("target") if isinstance(data.get("target"), dict) else {}
        builtin = target.get("builtin") if not target.get("path") else None
        fit_frame, resolution = SOURCE_MATCHING.get(builtin, (False, None))
        pretrain = dict(pretrain)
        if pretrain.get("source_fit_frame") == "auto":
            pretrain["source_fit_frame"] = fit_frame
        if pretrain.get("source_resolution") == "auto":
            pretrain["source_resolution"] = resolution
        return {**tree, "pretrain": pretrain}

    @model_validator(mode="before")
    @classmethod
    def _derive_model_name(cls, tree):
        """A null ``registry.model_name`` becomes ``tlp-<target>`` (``derived_model_name``):
        a model is bound to one task, so each target registers under a name of its own unless
        the user names one. Resolved here, so params.resolved.yaml and DVC hold the name."""
        if not isinstance(tree, dict):
            return tree
        registry, data = tree.get("registry"), tree.get("data")
        if not isinstance(registry, dict) or registry.get("model_name") is not None:
            return tree
        target = data.get("target") if isinstance(data, dict) else None
        if not isinstance(target, dict):
            return tree
        name = derived_model_name(target.get("builtin"), target.get("path"))
        return {**tree, "registry": {**registry, "model_name": name}} if name else tree

    @model_validator(mode="after")
    def _auto_needs_candidates(self) -> Params:
        if self.transfer.source == "auto" and not self.rank.candidates:
            raise ValueError("transfer.source: auto needs rank.candidates to choose from")
        return self

    @model_validator(mode="after")
    def _pretraining_coherent(self) -> Params:
        """Self-supervised pretraining, unlabelled sources and instance weighting: each
        combination that could only fail later (or do nothing) is refused here, by key."""
        pre, transfer = self.pretrain, self.transfer
        self_supervised = pre.objective in SELF_SUPERVISED
        if not self_supervised and pre.images == "target":
            raise ValueError(
                "pretrain.images: target is for a self-supervised pretrain.objective (simclr, "
                "byol); supervised pretraining learns data.source's labels"
            )
        if not self_supervised and self.data.source.unlabeled:
            raise ValueError(
                "pretrain.objective: supervised needs labels, but data.source.unlabeled is "
                "true; set pretrain.objective=simclr or byol"
            )
        if self_supervised and pre.checkpoint is not None and not pre.train_on_source:
            raise ValueError(
                f"pretrain.objective: {pre.objective} trains, but pretrain.checkpoint is taken "
                "as it is without pretrain.train_on_source; set pretrain.train_on_source=true "
                "(continued, domain-adaptive pretraining) or pretrain.objective=supervised"
            )
        if self_supervised and transfer.source == "auto":
            raise ValueError(
                f"pretrain.objective: {pre.objective} pretrains a source, but transfer.source: "
                "auto picks one of rank.candidates instead; set transfer.source=pretrain"
            )
        needs_labels = {"multitask", "source_only"} & set(transfer.strategies)
        if self.data.source.unlabeled and needs_labels:
            raise ValueError(
                f"transfer.strategies: {', '.join(sorted(needs_labels))} need the source's "
                "labels, but data.source.unlabeled is true"
            )
        if transfer.instance_weighting != "none" and not (
            SOURCE_USING_STRATEGIES & set(transfer.strategies)
        ):
            raise ValueError(
                "transfer.instance_weighting: weights source images, but no strategy in "
                "transfer.strategies trains on them (dann, mmd, multitask)"
            )
        if self_supervised and self.preprocess.image_size is not None:
            check_augmentations(pre.ssl, self.preprocess.image_size)
        return self

    @model_validator(mode="after")
    def _aliases_distinct(self) -> Params:
        """Each alias means one thing: a challenger alias equal to the champion's would make
        every registration a promotion that skipped the gate."""
        aliases = {
            "registry.challenger_alias": self.registry.challenger_alias,
            "registry.champion_alias": self.registry.champion_alias,
            "promote.previous_alias": self.promote.previous_alias,
        }
        seen: dict[str, str] = {}
        for key, alias in aliases.items():
            if alias in seen:
                raise ValueError(
                    f"{key}: {alias!r} is also {seen[alias]}; the registry aliases must differ"
                )
            seen[alias] = key
        return self

    def digest(self) -> str:
        """Stable hash of every value but the storage section; tags each run and registered
        version, keys resumable runs and the up-to-date shortcut. Storage is left out so that
        moving a store (another path, a server) leaves all three as they were."""
        values = self.model_dump(mode="json", exclude=set(UNHASHED_SECTIONS))
        blob = json.dumps(values, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]
