"""What MLflow accepts as a name, checked when params resolve rather than when a run is
half done: the rules of ``mlflow.utils.validation`` (MLflow 3.17), restated here so the
params layer stays free of MLflow's import time.

- an alias (``registry.challenger_alias`` ...): letters, digits, ``_`` and ``-``, at most
  255 characters, and not one MLflow reserves: ``latest`` (any case) and ``v<digits>`` (the
  version aliases ``models:/NAME@v3`` resolves itself);
- a registered model name: no ``/`` or ``:`` (they split ``models:/`` URIs), not a path that
  normalises to something else (``a/../b``, leading ``/``, ``.``);
- an experiment name: MLflow only bounds its length (500); control characters (a NUL
  byte, a newline) are refused too, because they break the SQL store, the UI and the
  one-line summaries;
- a seed: numpy's and torch's generators take 0..2**32-1.
"""

from __future__ import annotations

import posixpath
import re

MAX_ALIAS_LENGTH = 255
MAX_EXPERIMENT_NAME_LENGTH = 500
MAX_MODEL_NAME_LENGTH = 256  # the SQL store's column
MAX_SEED = 2**32 - 1

_ALIAS = re.compile(r"[\w\-]+")
_VERSION_ALIAS = re.compile(r"[vV]\d+")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def check_alias(value: str) -> str:
    """A registry alias MLflow will accept and not read as something else."""
    if not _ALIAS.fullmatch(value):
        raise ValueError(
            "not a valid MLflow alias: use letters, digits, '_' and '-' only (e.g. champion)"
        )
    if len(value) > MAX_ALIAS_LENGTH:
        raise ValueError(f"an MLflow alias has at most {MAX_ALIAS_LENGTH} characters")
    if value.lower() == "latest":
        raise ValueError("'latest' is reserved by MLflow (it means the newest version)")
    if _VERSION_ALIAS.fullmatch(value):
        raise ValueError(f"{value!r} is reserved by MLflow (v<N> means version N)")
    return value


def check_model_name(value: str) -> str:
    """A registered model name MLflow accepts and ``models:/NAME@ALIAS`` can address."""
    if not value.strip():
        raise ValueError("a model name must not be blank")
    bad = sorted({c for c in value if c in "/:"})
    if bad:
        shown = " and ".join(repr(c) for c in bad)
        raise ValueError(f"a registered model name cannot contain {shown} (MLflow's rule)")
    if _CONTROL.search(value):
        raise ValueError("a registered model name cannot contain control characters")
    if len(value) > MAX_MODEL_NAME_LENGTH:
        raise ValueError(f"a registered model name has at most {MAX_MODEL_NAME_LENGTH} characters")
    norm = posixpath.normpath(value)
    if norm != value or norm == "." or norm.startswith(".."):
        raise ValueError("a registered model name must not read as a path ('.', '..')")
    return value


def check_experiment_name(value: str) -> str:
    """An MLflow experiment name: bounded, printable."""
    if not value.strip():
        raise ValueError("an experiment name must not be blank")
    if _CONTROL.search(value):
        raise ValueError(
            "an experiment name cannot contain control characters (NUL, newline, tab ...)"
        )
    if len(value) > MAX_EXPERIMENT_NAME_LENGTH:
        raise ValueError(
            f"an MLflow experiment name has at most {MAX_EXPERIMENT_NAME_LENGTH} characters"
        )
    return value
