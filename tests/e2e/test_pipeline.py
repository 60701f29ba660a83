"""The smoke pipeline end to end: real Prefect (test harness), MLflow (SQLite in a temp dir),
DVC (a temp git + DVC repo), then the registered model loaded in a fresh process."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tasks.core.params import resolve_params
from tasks.stages import stage_names
from tests.conftest import ROOT, make_dvc_project

pytestmark = [pytest.mark.slow, pytest.mark.integration]
MODEL = "tlp-uci-digits"


@pytest.fixture(scope="module")
def pipeline_run(tmp_path_factory, prefect_harness):
    """One smoke run in a fresh project, then a second run with nothing changed."""
    from flows.pipeline import transfer_pipeline

    project = make_dvc_project(tmp_path_factory.mktemp("e2e"))

    overrides = [f"storage.tracking_uri=sqlite:///{project}/mlflow.db"]
    first = transfer_pipeline(profile="smoke", overrides=overrides, project_dir=str(project))
    lock_after_first = (project / "dvc.lock").read_text()
    second = transfer_pipeline(profile="smoke", overrides=overrides, project_dir=str(project))
    return project, first, second, lock_after_first


SMOKE = resolve_params(ROOT / "params.yaml", "smoke")
CANDIDATES = SMOKE.transfer.strategies
STAGE_NAMES = stage_names(SMOKE)  # transfer@scratch, transfer@linear_probe, ...
CHECKED = ("data/source", "data/target", "models/source") + tuple(
    f"models/candidates/{name}" for name in CANDIDATES
)


def test_first_run_registers_a_champion(pipeline_run):
    _, first, _, _ = pipeline_run
    assert first["model_name"] == MODEL and first["version"] == "1"
    assert set(first["aliases"]) == {"champion", "challenger"}
    assert first["skipped_stages"] == []
    assert set(first["candidates"]) == {"scratch", "linear_probe", "full"}
    assert first["audit"] == []  # no alias moved around tlp before the run
    project = pipeline_run[0]
    record = json.loads((project / ".tlp" / "stores.json").read_text())  # tasks/core/stores.py
    assert record["tracking_uri"] == f"sqlite:///{project}/mlflow.db"
    assert (record["model_name"], record["last_version"]) == (MODEL, "1")
    assert record["dvc_remote"] == str(project / "dvc-storage")
    for metrics in first["candidates"].values():
        assert 0.0 <= metrics["accuracy"] <= 1.0 and metrics["n"] > 0


def _flow_run_log(flow_run_id: str) -> list[str]:
    """The messages of a flow run's log, as its page in the Prefect UI lists them, once the
    run's last line has arrived (Prefect sends logs in batches, every few seconds)."""
    import time

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    wanted = LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id]))
    deadline = time.monotonic() + 30
    with get_client(sync_client=True) as client:
        while True:
            messages: list[str] = []
            while page := client.read_logs(log_filter=wanted, limit=200, offset=len(messages)):
                messages += [entry.message for entry in page]
            if any(m.startswith("pipeline: finished") for m in messages):
                return messages
            if time.monotonic() > deadline:
                return messages
            time.sleep(1)


def test_flow_run_page_shows_each_stage_and_every_epoch(pipeline_run):
    _, first, second, _ = pipeline_run
    messages = _flow_run_log(first["prefect_flow_run_id"])
    for stage in STAGE_NAMES:
        assert f"{stage}: started" in messages
        assert any(m.startswith(f"{stage}: done in ") for m in messages), stage
    epochs = [m for m in messages if m.startswith("pretrain: epoch ")]
    assert len(epochs) == 2 and "loss" in epochs[0] and "val accuracy" in epochs[0]
    assert any(m.startswith("transfer/full: epoch 1/") for m in messages)
    assert any(m.startswith("evaluate: test accuracy ") for m in messages)
    assert any(m.startswith("pipeline: finished") for m in messages)
    assert "pretrain: up to date, skipped" in _flow_run_log(second["prefect_flow_run_id"])


def test_registered_version_carries_lineage(pipeline_run):
    import mlflow
    from mlflow import MlflowClient

    project, first, _, _ = pipeline_run
    mlflow.set_tracking_uri(f"sqlite:///{project}/mlflow.db")
    version = MlflowClient().get_model_version_by_alias(MODEL, "champion")
    tags = version.tags
    assert len(tags["git_commit"]) == 40
    assert len(tags["params_hash"]) == 16
    assert tags["prefect_flow_run_id"] not in ("", "none")
    assert tags["mlflow_parent_run_id"] == first["mlflow_run_id"]
    assert tags["tlp.registration"] == "complete" and "tlp.registered_outside_flow" not in tags
    assert tags["tlp.task.target"] == "builtin:uci-digits"
    model_tags = MlflowClient().get_registered_model(MODEL).tags  # the model's task, once
    assert tags["tlp.task.id"] == model_tags["tlp.task.id"]
    lock = (project / "dvc.lock").read_text()
    for path in CHECKED:
        assert tags[f"dvc.{path}"].endswith(".dir") and tags[f"dvc.{path}"] in lock
    parent = MlflowClient().get_run(first["mlflow_run_id"])
    assert parent.data.tags["git_commit"] == tags["git_commit"]
    children = MlflowClient().search_runs(
        [parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'"
    )
    names = {r.info.run_name for r in children}
    assert {"prepare", "validate", "pretrain", "transfer/scratch", "transfer/full"} <= names
    pretrain = next(r for r in children if r.info.run_name == "pretrain")
    history = MlflowClient().get_metric_history(pretrain.info.run_id, "train_loss")
    assert len(history) == 2  # one point per epoch (smoke: 2 epochs)


def test_registered_version_has_its_onnx_export_checked_for_parity(pipeline_run):
    import yaml
    from mlflow import MlflowClient

    project, first, _, _ = pipeline_run
    report = json.loads((project / "reports" / "export.json").read_text())
    parity = report["parity"]
    assert parity["labels_identical"] and parity["max_abs_logit_diff"] <= 1e-4
    assert parity["n"] == first["candidates"][first["registered_strategy"]]["n"]  # all of test
    tags = MlflowClient().get_model_version(MODEL, first["version"]).tags
    assert tags["export.onnx"] == "onnx/model.onnx" and tags["export.opset"] == "20"
    register = yaml.safe_load((project / "dvc.lock").read_text())["stages"]["register"]
    export = next(o for o in register["outs"] if o["path"] == "models/export")
    assert export["nfiles"] == 1 and export["md5"].endswith(".dir")  # versioned by DVC
    print(f"export seconds (smoke): {report['seconds']}")


def test_version_and_runs_are_reviewable_in_mlflow(pipeline_run):
    """The model card (file, artifact, description with the gate's decision), the datasets
    with DVC digests, comparable per-strategy runs, the parent's params and description."""
    from mlflow import MlflowClient

    from tasks.core.versioning import output_hashes

    project, first, _, _ = pipeline_run
    store = f"sqlite:///{project}/mlflow.db"
    client = MlflowClient(tracking_uri=store, registry_uri=store)  # not a registry set earlier
    card = (project / "reports" / "model_card.md").read_text()
    assert card.startswith(f"# Model card: {MODEL} version {first['version']}")
    assert "Pending at registration" in card and "## Limitations" in card
    assert "ONNX export: onnxruntime against torch on" in card  # reports/export.json's parity
    version = client.get_model_version(MODEL, first["version"])
    assert version.description.startswith(f"# Model card: {MODEL} version 1")
    assert "Gate decision" in version.description and "**promoted**" in version.description
    assert "no champion yet" in version.description and "Pending" not in version.description
    logged = {a.path for a in client.list_artifacts(version.run_id)}
    assert {"model_card.md", "model_card.json", "reliability.png", "alias_history.md"} <= logged
    line = version.tags["alias_event.000002"]
    assert line.startswith("gate-promote: @champion none -> 1 by ")
    calibration = json.loads((project / "reports" / "calibration.json").read_text())
    assert set(calibration) == set(first["candidates"])
    assert sum(b["count"] for b in calibration["full"]) == first["candidates"]["full"]["n"]
    assert len(first["candidates"]["full"]["accuracy_ci"]) == 2

    parent = client.get_run(first["mlflow_run_id"])
    hashes = output_hashes(project)
    inputs = {d.dataset.name: d for d in parent.inputs.dataset_inputs}
    assert {"source/train", "target/train", "target/val", "target/test"} <= set(inputs)
    assert inputs["target/test"].dataset.digest == hashes["data/target"]  # DVC's, dvc.lock's
    assert inputs["source/train"].dataset.digest == hashes["data/source"]
    assert [t.value for t in inputs["target/val"].tags] == ["validation"]
    assert parent.data.params["transfer.epochs"] == "10" and "storage.tracking_uri" not in (
        parent.data.params
    )
    note = parent.data.tags["mlflow.note.content"]
    assert f"Registered **{MODEL} version 1**" in note and "Promotion gate: promoted" in note
    assert parent.data.metrics["test_accuracy"] == first["candidates"][first["best"]]["accuracy"]

    runs = client.search_runs([parent.info.experiment_id], "attributes.run_name = 'evaluate'")
    evaluate = next(r for r in runs if r.data.tags["mlflow.parentRunId"] == parent.info.run_id)
    children = client.search_runs(
        [parent.info.experiment_id], f"tags.mlflow.parentRunId = '{evaluate.info.run_id}'"
    )
    assert {r.info.run_name for r in children} == {f"evaluate/{n}" for n in first["candidates"]}
    for child in children:
        name = child.data.params["strategy"]
        assert child.data.metrics["test_accuracy"] == first["candidates"][name]["accuracy"]
        assert "target/test" in {d.dataset.name for d in child.inputs.dataset_inputs}
    shown = {a.path for a in client.list_artifacts(evaluate.info.run_id)}
    assert {"candidates.json", "candidates.png", "calibration"} <= shown
    transfer = client.search_runs(
        [parent.info.experiment_id], "attributes.run_name = 'transfer/full'"
    )[0]
    assert {d.dataset.name for d in transfer.inputs.dataset_inputs} == {
        "target/train",
        "target/val",
    }


def test_dvc_recorded_and_pushed_everything(pipeline_run):
    from dvc.repo import Repo

    project, _, _, _ = pipeline_run
    with Repo(str(project)) as repo:
        assert repo.status() == {}
        assert repo.status(cloud=True) == {}
        assert {s.name for s in repo.index.stages} == set(STAGE_NAMES)
    assert any((project / "dvc-storage").rglob("*"))
    # the prepared data is a handful of shard files per dataset, all inside DVC's outs
    for role in ("source", "target"):
        files = [p for p in (project / "data" / role).rglob("*") if p.is_file()]
        assert not (project / "data" / role / "images").exists()
        assert len(files) <= 2 + 4 and any(p.suffix == ".parquet" for p in files)
    outs = {project / "data" / "source", project / "data" / "target"}
    assert set((project / "data").iterdir()) <= outs | {project / "data" / ".gitignore"}


def test_summary_splits_the_time_into_compute_and_orchestration(pipeline_run):
    _, first, second, _ = pipeline_run
    assert set(first["stage_compute_seconds"]) == set(STAGE_NAMES)
    phases = first["orchestration_seconds"]
    assert {"setup", "dvc_status", "dvc_commit", "dvc_push", "promotion_gate"} <= set(phases)
    compute = sum(first["stage_compute_seconds"].values())
    assert all(v >= 0 for v in phases.values())
    assert compute + sum(phases.values()) <= first["wall_seconds"] + 0.1
    assert second["stage_compute_seconds"] == {}
    assert "dvc_commit" not in second["orchestration_seconds"]
    assert first["dvc_background_seconds"] > 0  # the commits and the push ran in the background


def test_second_run_trains_nothing(pipeline_run):
    project, first, second, lock_after_first = pipeline_run
    assert second["skipped_stages"] == list(STAGE_NAMES)
    assert second["version"] == first["version"]
    assert (project / "dvc.lock").read_text() == lock_after_first


def test_champion_predicts_raw_arrays_and_paths_in_a_fresh_process(pipeline_run):
    project, _, _, _ = pipeline_run
    code = f"""
import json, mlflow, numpy as np, pandas as pd
from pathlib import Path
mlflow.set_tracking_uri("sqlite:///{project}/mlflow.db")
model = mlflow.pyfunc.load_model("models:/{MODEL}@champion")
manifest = pd.read_parquet("{project}/data/target/manifest.parquet")
test = manifest[manifest.split == "test"].head(60)
from PIL import Image
from tasks.data.shards import export_images
import tempfile
exported = tempfile.mkdtemp()  # image files back from the shards, outside the project
files = export_images(Path("{project}/data/target"), test, Path(exported))
arrays = np.stack([np.asarray(Image.open(f)) for f in files])
by_array = model.predict(arrays)
paths = [str(f) for f in files]
try:
    model.predict(paths[:1])
    raise SystemExit("a path was read without allow_paths_under")
except ValueError as exc:
    assert "base64-encoded PNG or JPEG" in str(exc), exc
allowed = {{"allow_paths_under": exported}}
by_path = mlflow.pyfunc.load_model("models:/{MODEL}@champion", model_config=allowed).predict(paths)
print(json.dumps({{
    "shape": list(arrays.shape), "dtype": str(arrays.dtype),
    "labels_array": by_array["label"].tolist(), "labels_path": by_path["label"].tolist(),
    "truth": test.class_name.tolist(), "probs": by_array["probabilities"].iloc[0],
}}))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd="/")
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["shape"] == [60, 8, 8] and result["dtype"] == "uint8"
    assert result["labels_array"] == result["labels_path"]
    assert len(result["probs"]) == 10 and abs(sum(result["probs"]) - 1) < 1e-4
    correct = sum(a == b for a, b in zip(result["labels_array"], result["truth"], strict=True))
    assert correct / 60 > 0.5  # smoke-sized training, well above the 10% of chance


def test_dvc_repro_without_prefect_reproduces_the_outputs(pipeline_run):
    project, _, _, lock_after_first = pipeline_run
    result = subprocess.run(
        [sys.executable, "-m", "dvc", "repro", "--force"],
        cwd=project,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    import yaml

    from tasks.core.versioning import output_hashes

    hashes = output_hashes(project)
    before = {
        out["path"]: out["md5"]
        for stage in yaml.safe_load(lock_after_first)["stages"].values()
        for out in stage.get("outs", [])
    }
    for path in CHECKED:
        assert hashes[path] == before[path], f"{path} differs after dvc repro"
    # its register stage ran outside the flow: a version, but no alias moved and no gate
    import mlflow
    from mlflow import MlflowClient

    mlflow.set_tracking_uri(f"sqlite:///{project}/mlflow.db")
    versions = MlflowClient().search_model_versions(f"name='{MODEL}'")
    newest = max(versions, key=lambda v: int(v.version))
    assert int(newest.version) > 1 and newest.tags["tlp.registered_outside_flow"] == "true"
    assert not newest.aliases and "gate.decision" not in newest.tags


def test_first_run_was_promoted_by_the_gate(pipeline_run):
    from datetime import UTC, datetime

    import httpx
    from mlflow import MlflowClient
    from prefect.settings import PREFECT_API_URL

    from tasks.registry import audit

    project, first, second, _ = pipeline_run
    assert first["promotion"]["promoted"] and "no champion yet" in first["promotion"]["reason"]
    assert "already @champion" in second["promotion"]["reason"]
    tags = MlflowClient().get_model_version(MODEL, first["version"]).tags
    assert tags["gate.decision"] == "promote" and float(tags["gate.candidate_accuracy"]) > 0.5
    actions = [(e["alias"], e["action"]) for e in audit.read_events(project, MODEL)]
    assert actions[:2] == [("challenger", "challenger"), ("champion", "gate-promote")]
    body = {"artifacts": {"key": {"any_": ["promotion-gate"]}}, "sort": "CREATED_DESC"}
    answer = httpx.post(f"{PREFECT_API_URL.value()}/artifacts/filter", json=body)
    answer.raise_for_status()
    # this module's two runs only: earlier tests' flows share the session's Prefect API (the
    # gate is a subflow, so its artifacts are not the pipeline's flow run's): those created
    # since the first run's MLflow parent run started
    started_ms = MlflowClient().get_run(first["mlflow_run_id"]).info.start_time
    since = datetime.fromtimestamp(started_ms / 1000, tz=UTC)
    answers = [a for a in answer.json() if datetime.fromisoformat(a["created"]) >= since]
    texts = [a["data"] for a in answers]  # newest first: the second run, then the first
    assert len(texts) == 2 and "already @champion" in texts[0]
    assert f"version {first['version']} PROMOTED" in texts[1]
    assert "McNemar" in texts[1] or "no champion yet" in texts[1]


def test_lineage_prints_everything_that_made_the_champion(pipeline_run, capsys):
    from flows.cli import main

    project, first, _, _ = pipeline_run
    uri = f"sqlite:///{project}/mlflow.db"
    args = [
        "-C",
        str(project),
        "lineage",
        f"{MODEL}@champion",
        "--set",
        f"storage.tracking_uri={uri}",
    ]
    assert main([*args, "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["complete"] and info["missing"] == []
    assert info["version"] == first["version"] and len(info["git_commit"]) == 40
    assert set(info["dvc"]) == set(CHECKED)
    assert info["params"]["transfer"]["epochs"] == 10  # the smoke profile's exact values
    assert info["mlflow_parent_run_id"] == first["mlflow_run_id"]
    assert info["prefect_flow_run_id"] == first["prefect_flow_run_id"]
    assert info["gate"]["decision"] == "promote"
    assert main(args) == 0
    text = capsys.readouterr().out
    for needle in (info["git_commit"], info["dvc"]["data/target"], info["mlflow_run_id"]):
        assert needle in text


def test_reproduce_fetches_the_data_reruns_and_matches(pipeline_run, tmp_path):
    import mlflow

    from tasks.registry.lineage import reproduce

    project, first, _, _ = pipeline_run
    mlflow.set_tracking_uri(f"sqlite:///{project}/mlflow.db")
    mlflow.set_registry_uri(f"sqlite:///{project}/mlflow.db")
    client = mlflow.MlflowClient()
    versions_before = len(client.search_model_versions(f"name = '{MODEL}'"))
    result = reproduce(f"{MODEL}@champion", project, tmp_path / "work")
    assert result["metrics_match"], (result["logged_metrics"], result["rerun_metrics"])
    assert all(result["outputs_match"].values()), result["hashes"]
    assert result["code"] == str(tmp_path / "work" / "tasks")  # the commit's own code ran
    assert not (tmp_path / "work" / "mlflow.db").exists()  # the registry was not touched
    assert len(client.search_model_versions(f"name = '{MODEL}'")) == versions_before
    assert result["version"] == first["version"]


def _dvc(project, *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "dvc", *args], cwd=project, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    return done.stdout


def test_dvc_metrics_and_plots_show_the_candidates(pipeline_run):
    """`dvc metrics show`: one narrow row per candidate; `dvc plots show`: the declared plots
    load (the reliability diagram once reports/calibration.json feeds it)."""
    project, first, _, _ = pipeline_run
    metrics = json.loads(_dvc(project, "metrics", "show", "--json"))
    (workspace,) = metrics.values()  # keyed by revision; the workspace is ""
    files = workspace["data"]
    rows = {Path(f).stem: m["data"] for f, m in files.items()}
    assert set(rows) == set(first["candidates"])  # reports/scores/ only, not every report
    for name, row in rows.items():
        assert row["test_acc"] == round(first["candidates"][name]["accuracy"], 4)
        assert row["val_acc"] == round(first["candidates"][name]["val_accuracy"], 4)
    assert max(len(line) for line in _dvc(project, "metrics", "show").splitlines()) < 100
    plots = json.loads(_dvc(project, "plots", "show", "--json"))["data"]
    confusion = plots["reports/plots/confusion.json"][0]["content"]["data"]["values"]
    assert len(confusion) == first["candidates"][first["best"]]["n"]  # one per test image
    bars = plots["reports/plots/accuracy.json"][0]["content"]["data"]["values"]
    assert {b["candidate"] for b in bars} == set(first["candidates"])
    reliability = plots.get("reports/plots/reliability.json") or []
    if (project / "reports" / "plots" / "reliability.json").exists():
        assert reliability and reliability[0]["content"]["data"]["values"]


def test_dvc_exp_show_reads_a_committed_run(pipeline_run, tmp_path):
    """What DVC's views read is not git-ignored in an experiment repository: committed with
    the run (here in a clone, so this module's project stays as it is), `dvc exp show` shows
    the commit's params and scores instead of `!`."""
    import shutil

    project, first, _, _ = pipeline_run
    status = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=all"],
        cwd=project,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    # params.resolved.yaml is in the project's first commit (DVC reads dvc.yaml's vars in it)
    trackable = [line[3:] for line in status if line.startswith(("?? ", " M "))]
    assert {"dvc.lock", "params.resolved.yaml", "reports/plots/accuracy.json"} <= set(trackable)
    assert not [p for p in trackable if p.startswith(("data/", "models/", "reports/data_docs"))]
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(project), str(clone)], check=True)
    for rel in trackable:
        (clone / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(project / rel, clone / rel)
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@example.invalid"]
    subprocess.run([*git, "add", "-A"], cwd=clone, check=True)
    subprocess.run([*git, "commit", "-q", "-m", "run"], cwd=clone, check=True)
    rows = json.loads(_dvc(clone, "exp", "show", "--json"))
    head = next(r for r in rows if r["rev"] != "workspace")
    assert head.get("error") is None, head
    params = head["data"]["params"]["params.resolved.yaml"]["data"]
    assert params["transfer"]["strategies"] == list(first["candidates"])
    scores = head["data"]["metrics"]
    assert set(scores) == {f"reports/scores/{n}.json" for n in first["candidates"]}
    assert all("test_acc" in s["data"] for s in scores.values())


def test_a_target_only_change_leaves_pretrain_up_to_date(pipeline_run, tmp_path):
    """Pretrain depends on the source's validation outcome (reports/pretrain_inputs.json),
    not on reports/validation.json, which holds the target's too: after a target-only
    change (fewer target images: the target's rows and statistics in validation.json change),
    prepare and validate rerun, pretrain stays up to date and transfer does not. On a copy
    of the run's project, through DVC's API, without a third flow run."""
    import shutil

    from tasks.core import versioning
    from tasks.core.context import open_context
    from tasks.core.params import resolve_params, write_resolved
    from tasks.stages import get_stage

    project, *_ = pipeline_run
    copy = tmp_path / "copy"
    shutil.copytree(project, copy, symlinks=True)
    sets = [f"storage.tracking_uri=sqlite:///{tmp_path}/other.db", "data.target.limit=1000"]
    params = resolve_params(copy / "params.yaml", "smoke", sets)
    write_resolved(params, copy)
    assert not versioning.is_up_to_date(copy, "prepare")
    ctx = open_context(copy, params)
    for name in ("prepare", "validate"):
        get_stage(name).run(ctx)
        versioning.commit_stage(copy, name)
    assert versioning.is_up_to_date(copy, "pretrain")
    assert not versioning.is_up_to_date(copy, "transfer@full")  # it reads the target
