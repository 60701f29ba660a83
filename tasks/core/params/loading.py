"""From files to a validated tree: params.yaml + profile + preset + environment + ``--set``, the
resolved file the stages read back, and the defaults for sections built by hand."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from tasks.core.params.completion import complete_params
from tasks.core.params.overrides import apply_overrides, apply_value, drop_replaced, merge
from tasks.core.params.scaling import candidate_params
from tasks.core.params.section import ParamsError, Section
from tasks.core.params.storage import MOVED_KEYS, environment_overrides
from tasks.core.params.tree import Params

PARAMS_FILE = "params.yaml"
RESOLVED_PARAMS_FILE = "params.resolved.yaml"
CANDIDATES_SECTION = "candidates"  # params.resolved.yaml only: what each transfer@NAME reads
DEFAULT_PROFILE = "default"
# the tool's own params.yaml (a source checkout): the defaults of default_section
TOOL_PARAMS_FILE = Path(__file__).resolve().parents[3] / PARAMS_FILE


def format_errors(exc: ValidationError) -> str:
    """pydantic's errors as one line, each naming its dotted key."""
    lines = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"] if not str(p).startswith("function-"))
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = f"moved to {MOVED_KEYS[loc]}" if loc in MOVED_KEYS else "unknown key"
        elif err["type"] == "missing":
            msg = "missing key (params.yaml sets every key; the code holds no defaults)"
        got = err.get("input")
        shown = (
            ""
            if err["type"] in ("extra_forbidden", "missing") or isinstance(got, dict)
            else f" (got {got!r})"
        )
        # a check across sections (Params' own validators) names its keys in the message
        lines.append(f"{loc}: {msg}{shown}" if loc else f"{msg}{shown}")
    return "; ".join(lines)


def validate(tree: dict[str, Any], origin: str = "") -> Params:
    """A raw tree as Params, or a ParamsError naming every bad key (prefixed by ``origin``)."""
    try:
        return Params.model_validate(tree)
    except ValidationError as exc:
        raise ParamsError(f"{origin}{format_errors(exc)}") from None


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


def _move_storage_keys(tree: dict[str, Any]) -> None:
    """A resolved file written before storage left ``base`` (an older run, or the lineage
    files of a version registered then): tlp wrote it, so its keys are moved, not refused,
    and the keys and sections added since (``decoded_cache_mb``, ``search_uri``, ``engine``,
    ``search``) are filled with what that run did (no decoded cache, no search, candidates in
    turn)."""
    base = tree.get("base")
    if isinstance(base, dict) and "storage" not in tree:
        leaves = [old.removeprefix("base.") for old in MOVED_KEYS]
        tree["storage"] = {leaf: base.pop(leaf) for leaf in leaves if leaf in base}
    storage = tree.get("storage")
    if isinstance(storage, dict) and "decoded_cache_mb" not in storage:
        # written before the decoded cache existed: that run decoded every epoch (0 = off;
        # the cache never changes results, only how often images are decoded)
        storage["decoded_cache_mb"] = 0
    if isinstance(storage, dict) and "search_uri" not in storage:
        storage["search_uri"] = "sqlite:///optuna.db"  # written before searches: none was run
    if "engine" not in tree:  # written before the engine: candidates trained in turn, in-process
        tree["engine"] = {"runner": "local", "workers": 1, "address": None, "retries": 0}
    if "search" not in tree:  # written before the search: none was run
        search = read_params_file(TOOL_PARAMS_FILE)["search"]
        tree["search"] = {**search, "trials": 0}


def resolve_params(
    params_file: Path,
    profile: str = DEFAULT_PROFILE,
    overrides: list[str] | tuple[str, ...] = (),
    preset: str | None = None,
) -> Params:
    """Load params.yaml, apply a profile, a preset and ``--set`` overrides, validate the
    result and fill what it leaves to the source model (``complete_params``: ``model.arch``
    of a checkpoint that brings its own, null ``preprocess`` values). A resolved file is
    complete already, and is read back as written: completing it again could read a moved
    alias. A preset (``presets:``) chooses strategies and search budget on top of the
    profile's data and model, so ``--profile pretrained --preset best`` combine."""
    tree = read_params_file(params_file)
    profiles = tree.pop("profiles", None) or {}
    presets = tree.pop("presets", None) or {}
    if params_file.name == RESOLVED_PARAMS_FILE:
        tree.pop(CANDIDATES_SECTION, None)  # derived from the rest (resolved_text)
        _move_storage_keys(tree)
    if profile != DEFAULT_PROFILE:
        if profile not in profiles:
            known = ", ".join([DEFAULT_PROFILE, *profiles]) or DEFAULT_PROFILE
            raise ParamsError(f"profile {profile!r} is not in {params_file.name} (known: {known})")
        merge(tree, profiles[profile] or {}, f"profiles.{profile}")
    if preset is not None:
        if preset not in presets:
            known = ", ".join(presets) or "none"
            raise ParamsError(f"preset {preset!r} is not in {params_file.name} (known: {known})")
        merge(tree, presets[preset] or {}, f"presets.{preset}")
    for keys, value in environment_overrides():
        apply_value(tree, keys, value, "environment")
    apply_overrides(tree, overrides, "--set")
    params = validate(tree)
    if params_file.name == RESOLVED_PARAMS_FILE:
        return params
    return complete_params(params, params_file.resolve().parent)


def with_overrides(
    params: Params,
    overrides: list[str] | tuple[str, ...],
    origin: str,
    project_dir: Path | None = None,
) -> Params:
    """``params`` with ``--set``-style overrides applied, validated and completed again
    (an override may name another checkpoint, or set a preprocess value back to null);
    relative checkpoint paths are in ``project_dir`` (default: the working directory)."""
    tree = params.model_dump(mode="json")
    apply_overrides(tree, overrides, f"{origin}:")
    return complete_params(validate(tree, f"{origin}: "), project_dir or Path.cwd())


def load_resolved(project_dir: Path) -> Params:
    """Params a stage runs with: the resolved file, or the default profile if none yet."""
    resolved = project_dir / RESOLVED_PARAMS_FILE
    if resolved.is_file():
        return resolve_params(resolved)
    params = resolve_params(project_dir / PARAMS_FILE)
    write_resolved(params, project_dir)
    return params


def resolved_text(params: Params) -> str:
    """The contents of params.resolved.yaml for ``params``, with the derived section
    ``candidates``: per strategy of ``transfer.strategies``, the params its stage
    ``transfer@NAME`` reads (``candidate_params``), which dvc.yaml lists as that stage's
    params. Derived, so not part of ``Params`` (dropped when the file is read back)."""
    text = "# Written by tlp from params.yaml + profile + --set. Do not edit; DVC reads it.\n"
    tree = params.model_dump(mode="json")
    tree[CANDIDATES_SECTION] = {s: candidate_params(params, s) for s in params.transfer.strategies}
    return text + yaml.safe_dump(tree, sort_keys=False)


def write_resolved(params: Params, project_dir: Path) -> Path:
    """Write the resolved tree only when it changed, so DVC sees no spurious edits."""
    path = project_dir / RESOLVED_PARAMS_FILE
    text = resolved_text(params)
    if not path.is_file() or path.read_text() != text:
        path.write_text(text)
    return path


@functools.cache
def default_params() -> Params:
    """The tool's own params.yaml, default profile, no environment: the defaults."""
    tree = read_params_file(TOOL_PARAMS_FILE)
    tree.pop("profiles", None)
    tree.pop("presets", None)
    return complete_params(validate(tree, f"{TOOL_PARAMS_FILE}: "), TOOL_PARAMS_FILE.parent)


def default_section(section: str, **values: Any) -> Section:
    """One section (dotted: ``"data.target"``) of the tool's params.yaml with ``values``
    replaced, validated like ``--set``. The models hold no defaults, so tests, benchmarks
    and library callers that build a section by hand start from the same values users
    read in params.yaml: ``default_section("pretrain", epochs=2)``."""
    keys = section.split(".")
    tree = default_params().model_dump(mode="json")
    for key, value in values.items():
        apply_value(tree, [*keys, key], value, f"default_section({section!r})")
        drop_replaced(tree, [*keys, key], value)
    node: Any = validate(tree, f"default_section({section!r}): ")
    for key in keys:
        node = getattr(node, key)
    return node
