"""``tlp rank`` and ``transfer.source: auto`` on tiny real checkpoints (16x16 resnet10t on
uci-digits: one trained on real labels, one never trained, one trained on shuffled labels)."""

from __future__ import annotations

import json
import sqlite3

import pytest

from flows.cli import main

pytestmark = pytest.mark.integration

SMALL = ["--profile", "smoke", "--set", "preprocess.image_size=16", "--set", "base.threads=1"]


@pytest.fixture(scope="module")
def random_label(gate_candidates, tmp_path_factory):
    """resnet10t fitted to uci-digits with its labels shuffled: a source that learned nothing
    about digits (the "unrelated source" control)."""
    import torch

    from tasks.core.params import default_section
    from tasks.data.loading import load_tensors
    from tasks.modeling.models import ModelCard, create_model, save_checkpoint
    from tasks.modeling.training import fit

    cfg = default_section("preprocess", image_size=16)
    x, y, classes = load_tensors(gate_candidates.project / "data" / "target", "train", cfg)
    shuffled = y[torch.randperm(len(y), generator=torch.Generator().manual_seed(0))]
    model = create_model("resnet10t", len(classes), 1, seed=0)
    train = dict(epochs=3, batch_size=16, lr=3e-3, warmup_epochs=0, augment_shift=0, min_steps=0)
    fit(model, (x, shuffled), default_section("transfer", **train), seed=0)
    card = ModelCard(arch="resnet10t", classes=classes, preprocess=cfg, strategy="random")
    return save_checkpoint(model.eval(), card, tmp_path_factory.mktemp("random") / "ckpt")


@pytest.fixture
def project(tmp_path, project_root):
    (tmp_path / "params.yaml").write_text((project_root / "params.yaml").read_text())
    return tmp_path


def _runs(db):
    if not db.exists():
        return []
    with sqlite3.connect(db) as con:
        return [r[0] for r in con.execute("select name from runs")]


def test_rank_orders_sources_and_records_the_table(
    project, gate_candidates, random_label, prefect_harness, capsys
):
    from prefect.client.orchestration import get_client

    from tests.registry_support import MODEL, open_store, register

    # the never-trained model as a registered version: resolved to its checkpoint artifact
    experiment = open_store(f"sqlite:///{project}/mlflow.db", project)
    weak = f"models:/{MODEL}/{register(gate_candidates.weak, gate_candidates.project, experiment)}"
    strong = str(gate_candidates.strong)
    code = main(["-C", str(project), "rank", strong, weak, str(random_label), "--json", *SMALL])
    out = capsys.readouterr().out
    assert code == 0
    rows = json.loads(out[out.index("[") :])
    assert {r["candidate"]: r["origin"] for r in rows}[weak] == "registry"
    order = [r["candidate"] for r in rows]
    assert order[0] == strong  # ranked by LogME (the default score)
    assert order.index(strong) < order.index(str(random_label))
    assert [r["rank"] for r in rows] == [1, 2, 3]
    assert all(r[s] is not None for r in rows for s in ("logme", "leep", "nce", "h_score"))

    assert "rank" in _runs(project / "mlflow.db")
    with sqlite3.connect(project / "mlflow.db") as con:
        keys = {r[0] for r in con.execute("select key from latest_metrics")}
    assert any(k.endswith(".logme") for k in keys) and any(k.endswith(".nce") for k in keys)
    md = list((project / "mlartifacts").rglob("ranking.md"))
    assert md and "| 1 |" in md[0].read_text()
    # Artifact filters with nulls are rejected (422) by this server version: ask the API directly
    body = {"artifacts": {"key": {"any_": ["source-ranking"]}}, "limit": 5, "offset": 0}
    with get_client(sync_client=True) as client:
        found = client._client.post("/artifacts/filter", json=body).json()
    assert any(strong in a["data"] and "| 1 |" in a["data"] for a in found)


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda d: str(d / "missing"), "missing not found"),
        (
            lambda d: (d / "junk.safetensors").write_text("x") and str(d / "junk.safetensors"),
            "not a readable timm checkpoint file",
        ),
        (lambda d: str(d), "is not a checkpoint folder"),
        (lambda d: "models:/tlp-uci-digits", "expected models:/NAME@ALIAS or models:/NAME/VERSION"),
    ],
)
def test_a_bad_candidate_is_named_and_nothing_is_logged(project, capsys, make, message):
    code = main(["-C", str(project), "rank", make(project), *SMALL])
    err = capsys.readouterr().err
    assert code == 1 and message in err and err.count("\n") == 1
    assert _runs(project / "mlflow.db") == []


def test_a_checkpoint_for_other_channels_is_refused(project, gate_candidates, capsys):
    rgb = ["--set", "preprocess.channels=3", "--set", "preprocess.mean=[0.5,0.5,0.5]",
           "--set", "preprocess.std=[0.5,0.5,0.5]"]  # fmt: skip
    code = main(["-C", str(project), "rank", str(gate_candidates.strong), *SMALL, *rgb])
    err = capsys.readouterr().err
    assert code == 1 and "takes 1-channel images, the target is preprocessed to 3" in err


def test_auto_source_picks_the_top_candidate_for_the_pretrain_stage(
    project, gate_candidates, tmp_path
):
    """Stage pretrain with transfer.source: auto ranks and keeps the top candidate; a timm
    file without a classifier is scored on what is computable (LogME, H-score)."""
    import shutil

    import timm
    import torch
    from safetensors.torch import save_file

    from tasks.core.context import open_context, read_json
    from tasks.core.params import resolve_params
    from tasks.stages import pretrain

    donor = timm.create_model("resnet10t", num_classes=10, in_chans=1)
    headless = {k: v.contiguous() for k, v in donor.state_dict().items() if not k.startswith("fc.")}
    save_file(headless, str(tmp_path / "headless.safetensors"))
    candidates = (
        f"[{{name: weak, path: {gate_candidates.weak}}}, {{name: strong, path: "
        f"{gate_candidates.strong}}}, {{name: headless, path: {tmp_path}/headless.safetensors}}]"
    )
    params = resolve_params(
        project / "params.yaml",
        "smoke",
        [
            "preprocess.image_size=16",
            f"storage.tracking_uri=sqlite:///{project}/mlflow.db",
            "transfer.source=auto",
            f"rank.candidates={candidates}",
        ],
    )
    ctx = open_context(project, params)
    shutil.copytree(gate_candidates.project / "data" / "target", ctx.layout.target_data)
    result = pretrain.run(ctx)
    assert result["chosen"] == "strong"
    report = read_json(ctx.layout.pretrain_report)
    assert [r["candidate"] for r in report["ranking"]][0] == "strong"
    headless_row = next(r for r in report["ranking"] if r["candidate"] == "headless")
    assert headless_row["leep"] is None and headless_row["logme"] is not None
    from safetensors.torch import load_file

    a = load_file(str(ctx.layout.source_model / "model.safetensors"))
    b = load_file(str(gate_candidates.strong / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in b)
    assert pretrain.still_valid(ctx)
    (ctx.layout.target_data / "manifest.parquet").write_bytes(b"changed")
    assert not pretrain.still_valid(ctx)  # ranked on another target: rank again
