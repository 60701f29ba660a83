"""The pretrain stage with ``pretrain.checkpoint``: a checkpoint taken as it is (nothing
trained), or trained further on the source; the record it leaves, when it goes stale, the
same loader for rank candidates, and a bad checkpoint stopping ``tlp run`` before any work."""

from __future__ import annotations

import sqlite3

import pytest
import torch

from flows.cli import main

pytestmark = pytest.mark.integration


def _write(path, num_classes=10, seed=0):
    import timm
    from safetensors.torch import save_file

    torch.manual_seed(seed)
    donor = timm.create_model("resnet10t", num_classes=num_classes, in_chans=3)
    state = {k: v.contiguous() for k, v in donor.state_dict().items()}
    save_file(state, str(path))
    return state


def _context(project, project_root, *overrides):
    from tasks.core.context import open_context
    from tasks.core.params import resolve_params

    params = resolve_params(
        project_root / "params.yaml",
        "smoke",
        [f"storage.tracking_uri=sqlite:///{project}/m.db", *overrides],
    )
    return open_context(project, params)


def test_a_checkpoint_is_the_source_as_it_is(tmp_path, project_root):
    from mlflow import MlflowClient

    from tasks.core.context import read_json
    from tasks.modeling.checkpoints import sha256_file
    from tasks.modeling.models import load_checkpoint
    from tasks.stages import pretrain

    donor = _write(tmp_path / "w.safetensors")
    ctx = _context(tmp_path, project_root, "pretrain.checkpoint=w.safetensors")
    result = pretrain.run(ctx)  # no source data prepared: nothing is trained
    assert result["source"] == "checkpoint" and result["trained"] is False
    model, card = load_checkpoint(ctx.layout.source_model)
    assert card.arch == "resnet10t" and card.classes == tuple(str(i) for i in range(10))
    assert card.preprocess == ctx.params.preprocess and card.strategy == "source"
    state = model.state_dict()
    assert torch.equal(state["fc.weight"], donor["fc.weight"])
    assert state["conv1.0.weight"].shape[1] == 1  # adapted to the run's grey images

    record = read_json(ctx.layout.pretrain_report)["checkpoint"]
    assert record["sha256"] == sha256_file(tmp_path / "w.safetensors")
    assert record["location"] == str(tmp_path / "w.safetensors") and record["kind"] == "file"
    run = MlflowClient().search_runs([ctx.experiment_id], "attributes.run_name = 'pretrain'")[0]
    assert run.data.tags["source.checkpoint_sha256"] == record["sha256"]
    assert run.data.params["checkpoint_spec"] == "w.safetensors"
    assert "train_loss" not in run.data.metrics

    assert pretrain.still_valid(ctx)
    _write(tmp_path / "w.safetensors", seed=1)  # same name, other weights: DVC cannot see it
    assert not pretrain.still_valid(ctx)


def test_train_on_source_starts_from_the_checkpoint(tmp_path, project_root):
    from tasks.core.context import read_json
    from tasks.modeling.models import load_checkpoint
    from tasks.stages import prepare, pretrain

    _write(tmp_path / "w.safetensors", num_classes=1000)
    ctx = _context(
        tmp_path,
        project_root,
        "pretrain.checkpoint=w.safetensors",
        "pretrain.train_on_source=true",
        "pretrain.epochs=1",
        "data.source.limit=200",
    )
    prepare.run(ctx)
    result = pretrain.run(ctx)
    model, card = load_checkpoint(ctx.layout.source_model)
    assert result["trained"] and result["train_images"] > 0
    assert card.num_classes == 10 and model.get_classifier().weight.shape == (10, 512)
    assert read_json(ctx.layout.pretrain_report)["checkpoint"]["head_classes"] == 1000


def test_rank_candidates_share_the_loader(tmp_path, project_root):
    from tasks.core.params import CandidateParams
    from tasks.transferability.sources import SourceError, check_candidate, load_source

    ctx = _context(tmp_path, project_root)
    source = load_source(ctx, CandidateParams(path="efficientnet-lite0"))
    assert (source.origin, source.card.arch, source.card.num_classes) == (
        "builtin",
        "tf_efficientnet_lite0",
        1000,
    )
    assert source.record["sha256"].startswith("57934424")
    with pytest.raises(SourceError, match="set pretrain.allow_download=true"):
        check_candidate(CandidateParams(path="hub:resnet18.a1_in1k"), ctx.params, tmp_path)
    _write(tmp_path / "w.safetensors")
    with pytest.raises(SourceError, match="does not fit timm resnet18.*give the candidate's arch"):
        check_candidate(
            CandidateParams(path="w.safetensors", arch="resnet18"), ctx.params, tmp_path
        )


@pytest.mark.parametrize("kind", ["corrupt", "wrong-arch"])
def test_tlp_run_stops_on_a_bad_checkpoint_before_any_work(
    tmp_path, project_root, capsys, monkeypatch, kind
):
    monkeypatch.setenv("TLP_PREFECT_PRESTART", "0")  # no Prefect API for a run that stops
    (tmp_path / "params.yaml").write_text((project_root / "params.yaml").read_text())
    file = tmp_path / "w.safetensors"
    _write(file)
    overrides = ["--set", "pretrain.checkpoint=w.safetensors"]
    if kind == "corrupt":
        file.write_bytes(file.read_bytes()[:5000])
    else:
        overrides += ["--set", "model.arch=resnet18"]
    code = main(["-C", str(tmp_path), "run", "--profile", "smoke", *overrides])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1, err
    assert err.startswith(f"tlp: params error: pretrain.checkpoint: {file} ")
    assert ("not a readable" if kind == "corrupt" else "does not fit timm resnet18") in err
    assert not (tmp_path / "models").exists() and not (tmp_path / "data").exists()
    db = tmp_path / "mlflow.db"
    assert not db.exists() or not sqlite3.connect(db).execute("select * from runs").fetchall()
