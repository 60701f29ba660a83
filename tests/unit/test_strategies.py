"""Every transfer strategy on the smoke profile: real data, a real pretrained source model, a
real MLflow store in tmp. Each must lower its training loss and produce evaluation metrics."""

from __future__ import annotations

import math

import pytest

from tasks.core.params import ALL_STRATEGIES, resolve_params

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def source_project(tmp_path_factory, project_root):
    """Prepared smoke data and a pretrained source model, shared by every strategy."""
    from tasks.core.context import open_context
    from tasks.stages import prepare as datasets
    from tasks.stages import pretrain

    project = tmp_path_factory.mktemp("strategies")
    params = resolve_params(project_root / "params.yaml", "smoke", _overrides(project))
    ctx = open_context(project, params)
    datasets.run(ctx)
    pretrain.run(ctx)
    return project


def _overrides(project) -> list[str]:
    """The smoke profile, shrunk further: this file trains ten candidates. One torch thread:
    on a busy 2-core machine two threads oversubscribe and run several times slower."""
    return [
        f"storage.tracking_uri=sqlite:///{project}/m.db",
        "base.threads=1",
        "data.source.limit=1000",
        "evaluate.forgetting_train_images=300",
    ]


def _context(project, strategies, extra: tuple[str, ...] = ()):
    from tasks.core.context import open_context
    from tests.conftest import ROOT

    params = resolve_params(
        ROOT / "params.yaml",
        "smoke",
        [*_overrides(project), f"transfer.strategies=[{','.join(strategies)}]", *extra],
    )
    return open_context(project, params)


@pytest.mark.parametrize("strategy", [s for s in ALL_STRATEGIES if s != "source_only"])
def test_strategy_trains_and_is_evaluated(source_project, strategy):
    from mlflow import MlflowClient

    from tasks.stages import evaluate as evaluation
    from tasks.stages import transfer

    ctx = _context(source_project, [strategy])
    report = transfer.run(ctx)[strategy]
    assert report["final_train_loss"] < report["first_train_loss"]
    metrics = evaluation.run(ctx)
    m = metrics["candidates"][strategy]
    assert 0.0 <= m["accuracy"] <= 1.0 and 0.0 <= m["macro_f1"] <= 1.0
    assert 0.0 <= m["ece"] <= 1.0 and m["n"] > 0
    # ten classes: above chance after training. From random weights, 5 labels per class
    # and 40 steps leave scratch near chance (0.15 to 0.3 with the batch order), so it must
    # only beat chance by three standard errors of the test split; the others start from
    # the source and must do clearly better
    chance = 0.1
    floor = chance + 3 * math.sqrt(chance * (1 - chance) / m["n"]) if strategy == "scratch" else 0.2
    assert m["accuracy"] > floor, (strategy, m["accuracy"], floor)
    forget = metrics["forgetting"]
    assert 0.0 <= forget["candidates"][strategy]["probe_accuracy"] <= 1.0
    assert forget["source_model_probe_accuracy"] > 0.5
    runs = MlflowClient().search_runs(
        [ctx.experiment_id], "attributes.run_name = 'evaluate'", max_results=1
    )
    artifacts = [a.path for a in MlflowClient().list_artifacts(runs[0].info.run_id, "confusion")]
    assert f"confusion/{strategy}.png" in artifacts


def test_all_strategies_in_one_run_share_the_test_split(source_project):
    """Gain and the negative-transfer flag against scratch; source_only is the untouched source."""
    from tasks.stages import evaluate as evaluation
    from tasks.stages import transfer

    names = ["scratch", "source_only", "linear_probe"]
    ctx = _context(source_project, names)
    transfer.run(ctx)
    metrics = evaluation.run(ctx)
    assert set(metrics["candidates"]) == set(names)
    assert len({m["n"] for m in metrics["candidates"].values()}) == 1
    for name in names[1:]:
        flag = metrics["negative_transfer"][name]
        assert flag["gain"] == pytest.approx(
            metrics["candidates"][name]["accuracy"] - metrics["candidates"]["scratch"]["accuracy"]
        )
        assert flag["negative"] == (flag["gain"] < -flag["threshold"])
    assert math.isclose(
        metrics["forgetting"]["candidates"]["source_only"]["forgetting"], 0.0, abs_tol=1e-9
    )


def test_source_only_keeps_the_head_rows_of_a_subset_of_the_source_classes(tmp_path):
    """A target with some of the source's classes, in another order, gets those head rows;
    a class the source never saw is refused by name."""
    from types import SimpleNamespace

    import torch

    from tasks.core.params import default_section
    from tasks.modeling.models import ModelCard, create_model, save_checkpoint
    from tasks.modeling.strategies import STRATEGIES

    source = create_model("resnet10t", 3, 1, seed=0)
    card = ModelCard(
        arch="resnet10t", classes=("a", "b", "c"), preprocess=default_section("preprocess")
    )
    save_checkpoint(source, card, tmp_path / "source")
    ctx = SimpleNamespace(layout=SimpleNamespace(source_model=tmp_path / "source"))
    model, _ = STRATEGIES["source_only"](SimpleNamespace(ctx=ctx, classes=("c", "a")))
    head = model.get_classifier()
    assert torch.equal(head.weight, source.get_classifier().weight[[2, 0]])
    assert torch.equal(head.bias, source.get_classifier().bias[[2, 0]])
    with pytest.raises(ValueError, match="missing: d"):
        STRATEGIES["source_only"](SimpleNamespace(ctx=ctx, classes=("a", "d")))


def test_instance_weights_are_the_same_in_each_candidate_and_reported(source_project, caplog):
    """Each source-using candidate (a stage of its own, possibly on another worker) computes
    the weights itself: one log line each, the same summary in each one's
    reports/transfer/<name>.json, and its metrics and artifacts on both runs."""
    from mlflow import MlflowClient

    from tasks.core.context import candidate_report, read_json
    from tasks.stages import transfer

    weighting = ("transfer.instance_weighting=domain_classifier", "transfer.epochs=1")
    ctx = _context(source_project, ["dann", "multitask"], weighting)
    caplog.set_level("INFO", logger="tasks")
    report = transfer.run(ctx)
    assert sum("instance weights: effective sample size" in r.message for r in caplog.records) == 2
    for name in ("dann", "multitask"):
        assert read_json(candidate_report(ctx.layout, name)) == report[name]
    summary = report["dann"]["instance_weights"]
    assert report["multitask"]["instance_weights"] == summary
    assert sum(summary["histogram"]["counts"]) == summary["images"] > 0
    assert 0.0 < summary["ess_fraction"] <= 1.0 and 0.0 <= summary["domain_auc"] <= 1.0
    assert summary["max_weight"] <= summary["clip"]
    shares = [c["weight_share"] for c in summary["by_class"].values()]
    assert len(shares) == 10 and sum(shares) == pytest.approx(1.0)
    client = MlflowClient()
    for name in ("dann", "multitask"):
        run = client.search_runs(
            [ctx.experiment_id],
            f"attributes.run_name = 'transfer/{name}'",
            order_by=["attributes.start_time DESC"],
            max_results=1,
        )[0]
        assert run.data.metrics["instance_weights_ess_fraction"] == summary["ess_fraction"]
        assert run.data.metrics["domain_classifier_auc"] == summary["domain_auc"]
        paths = {a.path for a in client.list_artifacts(run.info.run_id, "instance_weights")}
        assert paths == {"instance_weights/summary.json", "instance_weights/histogram.png"}
