from pathlib import Path

import pytest
import yaml

from tasks.core.params import (
    RESOLVED_PARAMS_FILE,
    ParamsError,
    load_resolved,
    parse_override,
    resolve_params,
    write_resolved,
)


def test_default_and_smoke_profiles_load(project_root):
    default = resolve_params(project_root / "params.yaml")
    smoke = resolve_params(project_root / "params.yaml", "smoke")
    assert default.data.target.builtin == "uci-digits"
    assert smoke.pretrain.epochs < default.pretrain.epochs
    assert smoke.data.source.limit is not None
    assert set(default.transfer.strategies) == {"scratch", "linear_probe", "full"}


def test_override_parses_yaml_values(project_root):
    params = resolve_params(
        project_root / "params.yaml",
        overrides=[
            "pretrain.epochs=3",
            "transfer.strategies=[full]",
            "data.target.labels_per_class=1",
        ],
    )
    assert params.pretrain.epochs == 3
    assert params.transfer.strategies == ("full",)
    assert params.data.target.labels_per_class == 1


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("pretrain.epochs=-1", "pretrain.epochs"),
        ("pretrain.lr=0", "pretrain.lr"),
        ("data.target.test_fraction=1.5", "data.target.test_fraction"),
        ("base.device=tpu", "base.device"),
        ("transfer.strategies=[full, full]", "transfer"),
        ("pretrain.bogus=1", "pretrain.bogus"),
        ("nosuchsection.key=1", "nosuchsection"),
        ("preprocess.mean=[0.5, 0.5]", "preprocess"),
        ("export.opset=17", "export.opset"),
        ("export.parity_atol=0", "export.parity_atol"),
    ],
)
def test_bad_values_are_rejected_naming_the_key(project_root, override, key):
    with pytest.raises(ParamsError) as err:
        resolve_params(project_root / "params.yaml", overrides=[override])
    assert str(err.value).startswith(key)


def test_int8_needs_the_onnx_export(project_root):
    with pytest.raises(ParamsError, match="export: export.int8 quantizes the ONNX export"):
        resolve_params(
            project_root / "params.yaml", overrides=["export.onnx=false", "export.int8=true"]
        )


def test_unknown_key_in_file_is_rejected(tmp_path, project_root):
    tree = yaml.safe_load((project_root / "params.yaml").read_text())
    tree["pretrain"]["epochz"] = 3
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(tree))
    with pytest.raises(ParamsError, match=r"pretrain\.epochz: unknown key"):
        resolve_params(path)


def test_unknown_profile_and_malformed_override(project_root):
    with pytest.raises(ParamsError, match="profile 'nope'"):
        resolve_params(project_root / "params.yaml", "nope")
    with pytest.raises(ParamsError, match="section.key=value"):
        parse_override("pretrain.epochs")
    with pytest.raises(ParamsError, match="is a value, not a section"):
        resolve_params(project_root / "params.yaml", overrides=["base.seed.x=1"])


def test_a_preset_chooses_strategies_and_search_on_top_of_the_profile(project_root):
    """Presets apply after the profile (its data stays) and before --set (which wins); an
    unknown one is refused naming the known ones."""
    path = project_root / "params.yaml"
    quick = resolve_params(path, "pretrained", preset="quick")
    best = resolve_params(path, "smoke", ["search.trials=3"], preset="best")
    assert quick.data.target.builtin == "fashion-mnist" and quick.search.trials == 0
    assert set(quick.transfer.strategies) < set(best.transfer.strategies)
    assert best.search.trials == 3 and best.search.time_limit is not None
    assert best.transfer.epochs == resolve_params(path, "smoke").transfer.epochs
    with pytest.raises(ParamsError, match=r"preset 'fast' .*\(known: quick, best\)"):
        resolve_params(path, preset="fast")


def test_missing_file_is_named(tmp_path):
    with pytest.raises(ParamsError, match="params file not found"):
        resolve_params(tmp_path / "params.yaml")


def test_resolved_file_round_trips_and_is_not_rewritten(tmp_path, project_root):
    params = resolve_params(project_root / "params.yaml", "smoke", ["base.seed=7"])
    path = write_resolved(params, tmp_path)
    mtime = path.stat().st_mtime_ns
    assert write_resolved(params, tmp_path).stat().st_mtime_ns == mtime
    assert load_resolved(tmp_path) == params
    assert Path(tmp_path / RESOLVED_PARAMS_FILE).read_text().startswith("# Written by tlp")


def test_digest_tracks_values(project_root):
    a = resolve_params(project_root / "params.yaml")
    b = resolve_params(project_root / "params.yaml", overrides=["base.seed=1"])
    assert a.digest() == resolve_params(project_root / "params.yaml").digest()
    assert a.digest() != b.digest()


def test_a_path_alone_replaces_the_builtin(project_root, tmp_path):
    params = resolve_params(project_root / "params.yaml", "smoke", [f"data.target.path={tmp_path}"])
    assert params.data.target.path == str(tmp_path) and params.data.target.builtin is None
    assert params.data.target.labels_per_class == 5  # the rest of the section is kept
    back = resolve_params(
        project_root / "params.yaml",
        "default",
        [f"data.source.path={tmp_path}", "data.source.builtin=uci-digits"],
    )
    assert back.data.source.builtin == "uci-digits" and back.data.source.path is None


def test_exactly_one_source_and_known_builtins(project_root, tmp_path):
    both = tmp_path / "params.yaml"
    text = (project_root / "params.yaml").read_text()
    both.write_text(text.replace("builtin: mnist5k", f"builtin: mnist5k\n    path: {tmp_path}"))
    with pytest.raises(ParamsError, match="data.source: give exactly one of builtin"):
        resolve_params(both)
    with pytest.raises(ParamsError, match="data.target: unknown built-in dataset 'cifar'"):
        resolve_params(project_root / "params.yaml", overrides=["data.target.builtin=cifar"])
    params = resolve_params(project_root / "params.yaml", overrides=["data.target.builtin=mnist-m"])
    assert params.data.target.builtin == "mnist-m"  # every recipe's name is accepted
    # (tests/unit/test_datasets.py keeps BUILTIN_DATASETS equal to the recipes)


def test_validation_section_bounds(project_root):
    params = resolve_params(project_root / "params.yaml")
    assert params.validation.warn_only == () and params.validation.min_images_per_class == 5
    with pytest.raises(ParamsError, match="validation: min_side must not exceed max_side"):
        resolve_params(project_root / "params.yaml", overrides=["validation.min_side=5000"])


def test_rank_candidates_default_to_today_and_validate(project_root):
    params = resolve_params(project_root / "params.yaml")
    assert params.transfer.source == "pretrain" and params.rank.score == "logme"
    params = resolve_params(
        project_root / "params.yaml",
        overrides=[
            "transfer.source=auto",
            "rank.candidates=[models/source, {name: m, pretrain: [data.source.builtin=mnist-m]}]",
        ],
    )
    first, second = params.rank.candidates
    assert (first.name, first.path) == ("models/source", "models/source")
    assert second.name == "m" and second.pretrain == ("data.source.builtin=mnist-m",)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["transfer.source=auto"], "auto needs rank.candidates"),
        (["rank.candidates=[{path: a, pretrain: []}]"], "exactly one of path"),
        (["rank.candidates=[a, a]"], "names must not repeat"),
        (["rank.score=best"], "rank.score"),
        (["rank.candidates=[{pretrain: [nokey]}]"], "expected section.key=value"),
    ],
)
def test_bad_rank_params_are_named(project_root, overrides, message):
    with pytest.raises(ParamsError, match=message):
        resolve_params(project_root / "params.yaml", overrides=overrides)


UNLABELLED_FOLDER = ["data.source.path=imgs", "data.source.unlabeled=true"]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["pretrain.images=target"], "pretrain.images: target is for a self-supervised"),
        (UNLABELLED_FOLDER, "pretrain.objective: supervised needs labels"),
        (
            ["pretrain.objective=byol", "pretrain.checkpoint=efficientnet-lite0"],
            "set pretrain.train_on_source=true",
        ),
        (
            [*UNLABELLED_FOLDER, "pretrain.objective=simclr", "transfer.strategies=[multitask]"],
            "multitask need the source's labels",
        ),
        (["transfer.instance_weighting=domain_classifier"], "no strategy in transfer.strategies"),
        ([*UNLABELLED_FOLDER, "data.source.classes=[a, b]"], "has no classes"),
        (["data.target.path=imgs", "data.target.unlabeled=true"], "the target must be labelled"),
        (["pretrain.objective=simclr", "pretrain.ssl.crop_scale=[0.01, 1]"], "smallest crop"),
        (["pretrain.objective=simclr", "pretrain.ssl.blur_sigma=6"], "blur kernel"),
        (["pretrain.objective=simclr", "pretrain.ssl.crop_scale=[0.9, 0.5]"], "0 < min <= max"),
    ],
)
def test_incoherent_pretraining_params_are_named(project_root, overrides, message):
    """Self-supervised pretraining, unlabelled sources and instance weighting: a value that
    could only fail later, or do nothing, stops at params with the key named."""
    with pytest.raises(ParamsError, match=message):
        resolve_params(project_root / "params.yaml", overrides=overrides)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("preprocess.std=[.nan]", "preprocess.std.0: Input should be a finite number"),
        ("preprocess.mean=[.inf]", "preprocess.mean.0: Input should be a finite number"),
        ("transfer.lr=.nan", "transfer.lr: Input should be a finite number"),
        ("promote.alpha=.nan", "promote.alpha: Input should be a finite number"),
        ("base.seed=4294967296", "base.seed: Input should be less than or equal to 4294967295"),
        ("data.split_seed=-1", "data.split_seed: Input should be greater than or equal to 0"),
        (
            "registry.challenger_alias=champion",
            "registry.champion_alias: 'champion' is also registry.challenger_alias; the "
            "registry aliases must differ",
        ),
        (
            "promote.previous_alias=challenger",
            "promote.previous_alias: 'challenger' is also registry.challenger_alias",
        ),
        ("registry.champion_alias=latest", "registry.champion_alias: 'latest' is reserved"),
        ("registry.champion_alias=LATEST", "registry.champion_alias: 'latest' is reserved"),
        ("registry.challenger_alias=v3", "registry.challenger_alias: 'v3' is reserved by MLflow"),
        ("promote.previous_alias=old champion", "promote.previous_alias: not a valid MLflow alias"),
        (
            "registry.model_name=a/b",
            "registry.model_name: a registered model name cannot contain '/'",
        ),
        (
            "registry.model_name=a:b",
            "registry.model_name: a registered model name cannot contain ':'",
        ),
        (
            'registry.model_name="a\\tb"',
            "registry.model_name: a registered model name cannot contain control",
        ),
        ('base.experiment="a\\0b"', "base.experiment: an experiment name cannot contain control"),
        (
            f"base.experiment={'x' * 501}",
            "base.experiment: an MLflow experiment name has at most 500",
        ),
    ],
)
def test_values_mlflow_numpy_or_torch_would_refuse_are_refused_naming_the_key(
    project_root, override, message
):
    with pytest.raises(ParamsError) as info:
        resolve_params(project_root / "params.yaml", overrides=[override])
    assert str(info.value).startswith(message) and "\n" not in str(info.value)


def test_edge_values_that_mlflow_accepts_pass(project_root):
    params = resolve_params(
        project_root / "params.yaml",
        overrides=[
            "base.seed=4294967295",
            "registry.champion_alias=v3-prod",
            "registry.model_name=team.digits-v2 (cpu)",
            "base.experiment=digits / team A",
        ],
    )
    assert params.base.seed == 2**32 - 1
