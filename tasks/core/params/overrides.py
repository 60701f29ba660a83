"""Edits of a raw params tree: ``--set section.key=value`` parsing, profile merging, and the
keys that exclude each other. Pure dict operations, before any validation."""

from __future__ import annotations

import copy
from typing import Any

import yaml

from tasks.core.params.section import ParamsError

# Keys that exclude each other: setting one (profile or --set) drops the other, so
# ``--set data.target.path=DIR`` alone switches the target from its built-in to DIR.
EXCLUSIVE_KEYS = {("data", "source"): ("builtin", "path"), ("data", "target"): ("builtin", "path")}


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


def drop_replaced(tree: dict[str, Any], keys: list[str], value: Any) -> None:
    """Setting one of EXCLUSIVE_KEYS removes its partner from ``tree``."""
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


def apply_value(tree: dict[str, Any], keys: list[str], value: Any, origin: str) -> None:
    """Set ``tree[k1][k2]...`` to ``value``, creating sections on the way."""
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


def apply_overrides(tree: dict, overrides: list[str] | tuple[str, ...], origin: str) -> None:
    """Apply ``section.key=value`` overrides to a raw params tree, in order."""
    for text in overrides:
        keys, value = parse_override(text)
        apply_value(tree, keys, value, f"{origin} {text}")
        drop_replaced(tree, keys, value)


def merge(tree: dict[str, Any], overrides: dict[str, Any], origin: str, prefix=()) -> None:
    """Merge a profile's nested overrides into ``tree``, section by section."""
    for key, value in overrides.items():
        path = [*prefix, key]
        if isinstance(value, dict) and isinstance(tree.get(key), dict):
            merge(tree[key], value, origin, path)
        else:
            apply_value(tree, [key], copy.deepcopy(value), origin)
            group = EXCLUSIVE_KEYS.get(tuple(prefix), ())
            if key in group and value is not None:
                for other in group:
                    if other != key:
                        tree.pop(other, None)
