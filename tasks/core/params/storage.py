"""Where runs and data are kept: the MLflow store, the DVC remote, the decoded-image cache.

Kept apart from every other section because it says *where*, not *what*: it is left out of
``Params.digest()`` (the params hash on runs and registered versions, the resume keys, the
``tlp run`` up-to-date shortcut) and no dvc.yaml stage lists it, so moving a store to
another path or server never retrains anything. Containers and workers set it through the
environment (ENV_OVERRIDES)."""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import Field

from tasks.core.params.section import Section


class StorageParams(Section):
    tracking_uri: str = Field(
        min_length=1, description="MLflow store; relative sqlite paths are in the project"
    )
    dvc_remote: str = Field(min_length=1, description="DVC remote URL or local dir")
    dvc_remote_endpoint: str | None = Field(
        description="S3-compatible endpoint of the DVC remote (MinIO, moto); null = AWS"
    )
    search_uri: str = Field(
        min_length=1,
        description="Optuna's RDB storage of the search studies; relative sqlite paths are in "
        "the project",
    )
    decoded_cache_mb: int = Field(
        ge=0,
        description="disk budget (MiB) of the decoded, preprocessed training images under "
        ".tlp/cache/decoded (tasks.data.streaming); 0 = decode every epoch",
    )


# The keys' former place (before they left ``base``): a user's file or ``--set`` naming one
# is told where it went, in the usual one-line params error.
MOVED_KEYS = {
    f"base.{key}": f"storage.{key}"
    for key in ("tracking_uri", "dvc_remote", "dvc_remote_endpoint", "decoded_cache_mb")
}
MOVED_KEYS["pretrain.checkpoint_file"] = (
    "pretrain.checkpoint (with pretrain.train_on_source=true to train it further on the source)"
)

# Stores set by the environment (a worker's or a container's), between profile and --set.
ENV_OVERRIDES = {
    "TLP_TRACKING_URI": ("storage", "tracking_uri"),
    "TLP_DVC_REMOTE": ("storage", "dvc_remote"),
    "TLP_DVC_REMOTE_ENDPOINT": ("storage", "dvc_remote_endpoint"),
    "TLP_SEARCH_URI": ("storage", "search_uri"),
}


def environment_overrides() -> list[tuple[list[str], str]]:
    """``TLP_TRACKING_URI`` etc. as (keys, value) pairs, for the variables that are set."""
    return [(list(k), os.environ[var]) for var, k in ENV_OVERRIDES.items() if os.environ.get(var)]


def resolve_tracking_uri(uri: str, project_dir: Path) -> str:
    """Relative sqlite paths live in the project; every other URI is used as given. Here,
    not in ``tasks.core.tracking``, so the checks before a run (the stores check, the
    up-to-date shortcut) resolve the store without importing MLflow."""
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri.startswith(prefix + "/"):
        return prefix + str((project_dir / uri[len(prefix) :]).resolve())
    return uri
