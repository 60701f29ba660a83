"""Typed view of params.yaml: profiles, ``--set`` overrides, validation before any work.

params.yaml holds the ``default`` profile in its sections and the overrides of every other
profile under ``profiles:``. It is the one source of values: the section models declare
types, bounds and validators, never a default, so the file and the code cannot disagree and
a key missing from a user's file is an error naming it (``default_section`` gives tests and
library callers a section filled from the tool's own params.yaml).

Resolving applies profile, environment (``TLP_TRACKING_URI`` ...) then ``--set`` overrides,
and validates the result with pydantic; unknown keys and out-of-range values are rejected
with a message that names the dotted key. The resolved tree is written to
``params.resolved.yaml``, the file dvc.yaml's stages take their params from, so DVC records
exactly the values each stage ran with. The ``storage`` section (where runs and data are
kept) stays out of the params hash: moving a store retrains nothing.

Modules: ``section`` (base model, error), ``overrides`` (tree edits), ``loading`` (files,
validation, defaults); the sections by concern in ``data``, ``training``, ``release``,
``storage``, and the whole tree in ``tree``; ``completion`` fills what params leave to the
source model (``model.arch`` of a checkpoint, null ``preprocess`` values).
"""

from tasks.core.params.completion import complete_params
from tasks.core.params.data import BUILTIN_DATASETS, DataParams, DatasetParams, ValidationParams
from tasks.core.params.loading import (
    DEFAULT_PROFILE,
    PARAMS_FILE,
    RESOLVED_PARAMS_FILE,
    default_params,
    default_section,
    load_resolved,
    read_params_file,
    resolve_params,
    resolved_text,
    with_overrides,
    write_resolved,
)
from tasks.core.params.overrides import EXCLUSIVE_KEYS, parse_override
from tasks.core.params.release import (
    CandidateParams,
    EvaluateParams,
    ExportParams,
    PromoteParams,
    RankParams,
    RegistryParams,
    ScheduleParams,
    Score,
)
from tasks.core.params.section import ParamsError
from tasks.core.params.storage import (
    ENV_OVERRIDES,
    MOVED_KEYS,
    StorageParams,
    environment_overrides,
)
from tasks.core.params.training import (
    ALL_STRATEGIES,
    SELF_SUPERVISED,
    SOURCE_USING_STRATEGIES,
    ModelParams,
    PreprocessParams,
    PretrainParams,
    SelfSupervisedParams,
    Strategy,
    TrainParams,
    TransferParams,
    check_augmentations,
)
from tasks.core.params.tree import UNHASHED_SECTIONS, BaseParams, Params

__all__ = [
    "ALL_STRATEGIES",
    "SELF_SUPERVISED",
    "SOURCE_USING_STRATEGIES",
    "SelfSupervisedParams",
    "check_augmentations",
    "BUILTIN_DATASETS",
    "DEFAULT_PROFILE",
    "ENV_OVERRIDES",
    "EXCLUSIVE_KEYS",
    "MOVED_KEYS",
    "PARAMS_FILE",
    "RESOLVED_PARAMS_FILE",
    "UNHASHED_SECTIONS",
    "BaseParams",
    "CandidateParams",
    "DataParams",
    "DatasetParams",
    "EvaluateParams",
    "ExportParams",
    "ModelParams",
    "Params",
    "ParamsError",
    "PreprocessParams",
    "PretrainParams",
    "PromoteParams",
    "RankParams",
    "RegistryParams",
    "ScheduleParams",
    "Score",
    "StorageParams",
    "Strategy",
    "TrainParams",
    "TransferParams",
    "ValidationParams",
    "complete_params",
    "default_params",
    "default_section",
    "environment_overrides",
    "load_resolved",
    "parse_override",
    "read_params_file",
    "resolve_params",
    "resolved_text",
    "with_overrides",
    "write_resolved",
]
