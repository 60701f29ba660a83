"""params.yaml is the one source of parameter values, and the storage section stays out of
every hash: moving a store must not retrain."""

from __future__ import annotations

import pytest
import yaml
from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from tasks.core.params import (
    EXCLUSIVE_KEYS,
    CandidateParams,
    Params,
    ParamsError,
    default_section,
    load_resolved,
    resolve_params,
    resolved_text,
)
from tasks.core.params.scaling import SearchRange
from tasks.core.params.section import Section


def _section_fields(model: type[BaseModel], node: dict, path: tuple[str, ...]):
    """(dotted key, field, parent keys, value in params.yaml or PydanticUndefined) per field."""
    for name, field in model.model_fields.items():
        sub = field.annotation
        if (
            isinstance(sub, type)
            and issubclass(sub, BaseModel)
            and isinstance(node.get(name), dict)
        ):
            yield from _section_fields(sub, node[name], (*path, name))
        else:
            yield ".".join((*path, name)), field, path, node.get(name, PydanticUndefined)


def _file_tree(project_root) -> dict:
    tree = yaml.safe_load((project_root / "params.yaml").read_text())
    tree.pop("profiles")
    return tree


def test_every_key_has_its_value_in_params_yaml_and_none_in_code(project_root):
    """No field has a value both in the code and in the file, or in the code only, or in
    neither: the file is the one place a value comes from."""
    code_and_file, code_only, nowhere = [], [], []
    for key, field, parent, value in _section_fields(Params, _file_tree(project_root), ()):
        has_default = field.default is not PydanticUndefined
        in_file = value is not PydanticUndefined
        if key.rsplit(".", 1)[1] in EXCLUSIVE_KEYS.get(parent, ()):
            continue  # builtin / path: params.yaml gives one, the other is absent
        if has_default:
            (code_and_file if in_file else code_only).append(key)
        elif not in_file:
            nowhere.append(key)
    assert (code_and_file, code_only, nowhere) == ([], [], [])


def _subclasses(cls):
    for sub in cls.__subclasses__():
        yield sub
        yield from _subclasses(sub)


def test_only_the_exclusive_pairs_and_list_items_declare_defaults():
    """The carve-outs stay small: builtin/path (one is absent by design), the optional
    keys of a rank candidate (list entries a user writes, none in params.yaml) and of a search
    range (``{low, high, log}`` or ``{choices}``: entries a user writes, one form or the other)."""
    declared = {
        f"{cls.__name__}.{name}"
        for cls in _subclasses(Section)
        for name, field in cls.model_fields.items()
        if field.default is not PydanticUndefined
    }
    assert declared == {
        "DatasetParams.builtin",
        "DatasetParams.path",
        *(f"CandidateParams.{k}" for k in CandidateParams.model_fields),
        *(f"SearchRange.{k}" for k in SearchRange.model_fields),
    }


@pytest.mark.parametrize("key", ["transfer.lr", "data.source.val_per_class", "storage"])
def test_a_key_missing_from_params_yaml_is_named(tmp_path, project_root, key):
    tree = yaml.safe_load((project_root / "params.yaml").read_text())
    *parents, leaf = key.split(".")
    node = tree
    for name in parents:
        node = node[name]
    del node[leaf]
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(tree))
    with pytest.raises(ParamsError) as err:
        resolve_params(tmp_path / "params.yaml")
    assert (
        str(err.value)
        == f"{key}: missing key (params.yaml sets every key; the code holds no defaults)"
    )


def test_default_section_starts_from_params_yaml(project_root):
    file = resolve_params(project_root / "params.yaml")
    assert default_section("transfer") == file.transfer
    shrunk = default_section("transfer", lr=0.01, epochs=3)
    assert (shrunk.lr, shrunk.epochs, shrunk.batch_size) == (0.01, 3, file.transfer.batch_size)
    folder = default_section("data.target", path="/images")
    assert folder.path == "/images" and folder.builtin is None  # as --set does
    with pytest.raises(ParamsError, match=r"transfer\.lr: Input should be greater than 0"):
        default_section("transfer", lr=0)
    with pytest.raises(ParamsError, match=r"pretrain\.epochz: unknown key"):
        default_section("pretrain", epochz=3)


# ---- storage: where things are kept, not what a run computes ----------------------------


def test_storage_settings_leave_the_params_hash_alone(project_root):
    file = project_root / "params.yaml"
    base = resolve_params(file)
    moved = resolve_params(
        file,
        overrides=[
            "storage.tracking_uri=postgresql://mlflow@db/mlflow",
            "storage.dvc_remote=s3://bucket/tlp",
            "storage.dvc_remote_endpoint=http://minio:9000",
        ],
    )
    assert moved.storage != base.storage and moved.digest() == base.digest()
    retrained = resolve_params(file, overrides=["transfer.lr=0.01"])
    assert retrained.digest() != base.digest()


def test_storage_from_the_environment_leaves_the_hash_alone(project_root, monkeypatch):
    base = resolve_params(project_root / "params.yaml")
    monkeypatch.setenv("TLP_TRACKING_URI", "http://mlflow:5000")
    monkeypatch.setenv("TLP_DVC_REMOTE", "s3://dvc/tlp")
    env = resolve_params(project_root / "params.yaml")
    assert (env.storage.tracking_uri, env.storage.dvc_remote) == (
        "http://mlflow:5000",
        "s3://dvc/tlp",
    )
    assert env.digest() == base.digest()


def test_no_dvc_stage_lists_storage(project_root):
    stages = yaml.safe_load((project_root / "dvc.yaml").read_text())["stages"]
    keys = [
        key
        for stage in stages.values()
        for group in stage.get("params", [])
        for key in (group if isinstance(group, str) else [k for v in group.values() for k in v])
    ]
    assert keys and not [k for k in keys if k == "base" or k.split(".")[0] == "storage"]


@pytest.mark.parametrize("key", ["tracking_uri", "dvc_remote", "dvc_remote_endpoint"])
def test_the_old_place_of_a_storage_key_names_the_new_one(project_root, tmp_path, key):
    with pytest.raises(ParamsError) as err:
        resolve_params(project_root / "params.yaml", overrides=[f"base.{key}=x"])
    assert str(err.value) == f"base.{key}: moved to storage.{key}"
    text = (project_root / "params.yaml").read_text().replace("base:\n", f"base:\n  {key}: x\n")
    (tmp_path / "params.yaml").write_text(text)
    with pytest.raises(ParamsError, match=f"^base.{key}: moved to storage.{key}$"):
        resolve_params(tmp_path / "params.yaml")


def test_a_resolved_file_from_before_the_decoded_cache_still_loads(project_root, tmp_path):
    params = resolve_params(project_root / "params.yaml")
    tree = yaml.safe_load(resolved_text(params))
    del tree["storage"]["decoded_cache_mb"]
    (tmp_path / "params.resolved.yaml").write_text(yaml.safe_dump(tree))
    assert load_resolved(tmp_path).storage.decoded_cache_mb == 0  # that run decoded always
    assert load_resolved(tmp_path).digest() == params.digest()


def test_a_resolved_file_from_before_the_move_still_loads(project_root, tmp_path):
    """tlp wrote it (an older run, or a version's lineage files): read, keys moved."""
    params = resolve_params(project_root / "params.yaml")
    tree = yaml.safe_load(resolved_text(params))
    tree["base"].update(tree.pop("storage"))
    del tree["base"]["search_uri"], tree["engine"], tree["search"]  # added since the move
    (tmp_path / "params.resolved.yaml").write_text(yaml.safe_dump(tree))
    old = load_resolved(tmp_path)
    assert old.search.trials == 0 and old.engine.workers == 1  # no search, candidates in turn
    assert old.model_dump(exclude={"search", "engine"}) == params.model_dump(
        exclude={"search", "engine"}
    )
