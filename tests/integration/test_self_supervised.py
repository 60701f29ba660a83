"""Self-supervised pretraining in the pipeline: the pretrain stage learns a source without
labels (simclr on the source's images; the target's own for in-domain pretraining), saves it
without a classifier, records the objective and a kNN accuracy per epoch (report, MLflow), and the
transfer stage fine-tunes from it; bad params stop ``tlp run`` before any work."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from flows.cli import main

pytestmark = pytest.mark.integration

SMALL = (
    "pretrain.epochs=2",
    "pretrain.batch_size=32",
    "pretrain.min_steps=0",
    "pretrain.ssl.projection_dim=16",
    "pretrain.ssl.hidden_dim=32",
    "pretrain.ssl.monitor_k=3",
    "data.source.limit=60",
    "data.target.limit=150",
    "transfer.strategies=[linear_probe,full]",
    "transfer.epochs=1",
)


def _context(project, project_root, *overrides):
    from tasks.core.context import open_context
    from tasks.core.params import resolve_params

    params = resolve_params(
        project_root / "params.yaml",
        "smoke",
        [f"storage.tracking_uri=sqlite:///{project}/m.db", *SMALL, *overrides],
    )
    return open_context(project, params)


def test_a_self_supervised_source_is_headless_recorded_and_transferred(tmp_path, project_root):
    from mlflow import MlflowClient

    from tasks.core.context import read_json
    from tasks.data.manifest import read_manifest
    from tasks.modeling.models import load_checkpoint
    from tasks.modeling.pretraining import self_supervised_images
    from tasks.modeling.strategies import source_task_head
    from tasks.registry.lineage import format_lineage
    from tasks.registry.publishing import source_tags
    from tasks.stages import prepare, pretrain, transfer

    objective, images = "simclr", "source"
    sets = (f"pretrain.objective={objective}", f"pretrain.images={images}")
    ctx = _context(tmp_path, project_root, *sets)
    prepare.run(ctx)
    result = pretrain.run(ctx)

    model, card = load_checkpoint(ctx.layout.source_model)
    assert card.classes == () and model.num_classes == 0  # no classifier: no labels learnt
    assert source_task_head(model, card) is None  # multitask gives the source task a new head
    report = read_json(ctx.layout.pretrain_report)
    assert report == result
    assert (report["objective"], report["images"], report["trained"]) == (objective, images, True)
    assert report["source_test_accuracy"] is None
    assert len(report["knn_accuracy"]) == 2 and report["final_knn_accuracy"] is not None
    assert all(0.0 <= a <= 1.0 for a in report["knn_accuracy"])
    assert report["train_images"] == len(
        read_manifest(ctx.layout.source_data).query("split == 'train'")
    )
    client = MlflowClient()
    run = client.search_runs([ctx.experiment_id], "attributes.run_name = 'pretrain'")[0]
    assert (run.data.params["objective"], run.data.params["images"]) == (objective, images)
    assert run.data.params["ssl.monitor_k"] == "3"
    knn = client.get_metric_history(run.info.run_id, "knn_accuracy")
    assert sorted(m.step for m in knn) == [0, 1]
    tags = source_tags(ctx)  # what the registered version is tagged with
    assert (tags["source.objective"], tags["source.images"]) == (objective, images)
    keys = ("model", "version", "git_commit", "git_dirty", "params_hash", "strategy")
    keys += ("test_accuracy", "mlflow_run_id", "mlflow_parent_run_id", "model_source")
    info = dict.fromkeys((*keys, "prefect_flow_run_id", "prefect_flow_run_url"), "")
    info |= {"aliases": [], "dvc": {}, "gate": {}, "params": None, "missing": []}
    info["source"] = {k.removeprefix("source."): v for k, v in tags.items()}
    lines = format_lineage(info).splitlines()  # what `tlp lineage` prints
    assert "  source objective  : simclr  (on the source's images)" in lines

    results = transfer.run(ctx)
    assert set(results) == {"linear_probe", "full"}
    for name in results:
        _, tuned = load_checkpoint(ctx.layout.candidates / name)
        assert tuned.classes == tuple(str(i) for i in range(10))

    # pretrain.images=target (byol trains on it the same way): the target's train split and
    # unlabelled pool, never its val or test split
    in_domain = ctx.params.model_copy(
        update={"pretrain": ctx.params.pretrain.model_copy(update={"images": "target"})}
    )
    x, uses = self_supervised_images(SimpleNamespace(params=in_domain, layout=ctx.layout))
    manifest = read_manifest(ctx.layout.target_data)
    assert uses == {"target": ("train", "unlabeled")}
    assert len(x) == manifest["split"].isin(["train", "unlabeled"]).sum() > 50


@pytest.mark.parametrize(
    ("sets", "start"),
    [
        (("pretrain.objective=dino",), "pretrain.objective: "),
        (
            (
                "pretrain.objective=simclr",
                "preprocess.image_size=8",
                "pretrain.ssl.crop_scale=[0.1,1.0]",
            ),
            "pretrain.ssl.crop_scale: the smallest crop of a 8 px image would be 2 px",
        ),
        (
            ("data.source.path=pool", "data.source.unlabeled=true"),
            "pretrain.objective: supervised needs labels, but data.source.unlabeled is true",
        ),
        (
            ("pretrain.objective=byol", "transfer.strategies=[source_only,full]"),
            "transfer.strategies: source_only predicts with the source model's classifier",
        ),
    ],
    ids=["unknown-objective", "crop-too-small", "supervised-unlabeled", "source-only-ssl"],
)
def test_bad_self_supervised_params_stop_tlp_run_before_any_work(
    tmp_path, project_root, capsys, monkeypatch, sets, start
):
    monkeypatch.setenv("TLP_PREFECT_PRESTART", "0")  # no Prefect API for a run that stops
    (tmp_path / "params.yaml").write_text((project_root / "params.yaml").read_text())
    (tmp_path / "pool").mkdir()
    code = main(
        ["-C", str(tmp_path), "run", "--profile", "smoke", *(a for s in sets for a in ("--set", s))]
    )
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1, err
    assert start in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml", "pool"]  # nothing ran
