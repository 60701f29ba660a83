"""``tlp predict``: a registered version (made by the register stage, so it has its ONNX
export) over a folder with a corrupt file and a wrong-shape array, on both runtimes, against
``mlflow.pyfunc.load_model(...).predict``; --strict; arguments refused before any work; the
MLflow run with its input dataset; an S3 prefix on moto's server."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from flows.cli import main
from tests.registry_support import first_test_files, register_project, run_register

pytestmark = pytest.mark.integration
MODEL = "tlp-uci-digits"  # params.yaml's registry.model_name


@pytest.fixture(scope="module")
def registered(gate_candidates, tmp_path_factory):
    """Version 1 of the model, registered by the real register stage in a temp store."""
    import mlflow

    base = tmp_path_factory.mktemp("predict")
    project = register_project(base, gate_candidates.project, gate_candidates.strong)
    registration = run_register(project)
    mlflow.MlflowClient().set_registered_model_alias(MODEL, "champion", registration["version"])
    return project, f"sqlite:///{base}/mlflow.db", registration


@pytest.fixture(scope="module")
def folder(registered) -> tuple[Path, list[Path]]:
    """24 test images in nested folders, one corrupt PNG, one array that is not an image."""
    project = registered[0]
    exported = first_test_files(project / "data" / "target", 24, project / "exported")
    root = project / "incoming"
    good = []
    for i, src in enumerate(exported):
        dst = root / f"batch{i % 3}" / f"{i:03d}.png"
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(src, dst)
        good.append(dst)
    (root / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    np.save(root / "wrong_shape.npy", np.zeros((2, 3, 4, 5), np.uint8))
    (root / "notes.txt").write_text("not an image suffix: not listed")
    return root, good


def tlp(registered, *args: str) -> int:
    project, store = registered[0], registered[1]
    return main(["-C", str(project), "predict", *args, "--set", f"storage.tracking_uri={store}"])


def test_the_register_stage_logs_the_export_with_the_version(registered):
    import json

    from mlflow import MlflowClient

    project, _, registration = registered
    client = MlflowClient()
    tags = client.get_model_version(MODEL, registration["version"]).tags
    assert tags["export.onnx"] == "onnx/model.onnx" and tags["export.opset"] == "20"
    assert float(tags["export.parity_max_abs_diff"]) <= 1e-4
    run = client.get_run(registration["run_id"])
    assert run.data.metrics["onnx_parity_max_abs_diff"] <= 1e-4
    logged = {f.path for f in client.list_artifacts(registration["run_id"], "onnx")}
    assert logged == {"onnx/model.onnx", "onnx/export.json"}
    report = json.loads((project / "reports" / "export.json").read_text())
    assert report["onnx"] == "models/export/model.onnx" and report["int8"] is None
    assert report["parity"]["labels_identical"] and report["parity"]["n"] > 100
    assert (project / "models" / "export" / "model.onnx").stat().st_size == report["size_bytes"]


@pytest.mark.parametrize("runtime", ["onnx", "pyfunc"])
def test_predict_on_a_folder_matches_pyfunc_predict(registered, folder, runtime, capsys):
    import mlflow

    root, good = folder
    out = root.parent / f"out-{runtime}.parquet"
    code = tlp(registered, "incoming", "--runtime", runtime, "--out", out.name, "--batch-size", "8")
    assert code == 0
    printed = capsys.readouterr().out
    assert "predicted 24 of 26 inputs (2 failed)" in printed and "images/s" in printed
    assert "corrupt.png" in printed and "wrong_shape.npy" in printed
    table = pd.read_parquet(out)
    assert len(table) == 26 and "notes.txt" not in " ".join(table.path)
    failed = table[table.error != ""].set_index("path")
    assert sorted(Path(p).name for p in failed.index) == ["corrupt.png", "wrong_shape.npy"]
    assert failed.label.isna().all() and failed.probability.isna().all()
    assert "not an image" in failed.error[str(root / "wrong_shape.npy")]
    scored = table[table.error == ""].set_index("path").loc[[str(p) for p in good]]
    expected = mlflow.pyfunc.load_model(f"models:/{MODEL}@champion").predict(
        [p.read_bytes() for p in good]  # PNG bytes: the model reads no paths
    )
    assert scored.label.tolist() == expected.label.tolist()
    classes = [c for c in table.columns if c.startswith("prob_")]
    assert classes == [f"prob_{i}" for i in range(10)]
    np.testing.assert_allclose(
        scored[classes].to_numpy(), np.stack(expected.probabilities), atol=1e-5
    )
    assert (scored.class_index.to_numpy() == scored[classes].to_numpy().argmax(1)).all()


def test_predict_on_a_prepared_manifest_reads_the_shards(registered, folder, capsys):
    """``tlp predict data/target/manifest.parquet``: a prepared dataset holds no image files;
    its rows are read from the shards and named by their manifest path."""
    from tasks.data.manifest import read_manifest
    from tasks.registry.export import OnnxClassifier

    project = registered[0]
    target = project / "data" / "target"
    assert not (target / "images").exists()
    out = project / "prepared.parquet"
    args = ("data/target/manifest.parquet", "--runtime", "onnx", "--batch-size", "256")
    assert tlp(registered, *args, "--out", out.name) == 0
    manifest = read_manifest(target)
    assert f"predicted {len(manifest)} of {len(manifest)} inputs" in capsys.readouterr().out
    table = pd.read_parquet(out)
    assert table.path.tolist() == [str(target.resolve() / p) for p in manifest.path]
    assert (table.error == "").all()
    first = [str(target.resolve() / p) for p in manifest[manifest.split == "test"].path[:24]]
    local = OnnxClassifier(project / "models" / "export" / "model.onnx")
    expected = local.predict([p.read_bytes() for p in folder[1]]).label.tolist()  # same images
    assert table.set_index("path").label[first].tolist() == expected


def test_predict_is_an_mlflow_run_with_its_input_dataset(registered, folder):
    from mlflow import MlflowClient

    project, _, registration = registered
    out = project / "logged.csv"
    assert tlp(registered, "incoming", "--out", "logged.csv") == 0
    client = MlflowClient()
    experiment = client.get_experiment_by_name("transfer-pipeline")
    wanted = "tags.`tlp.kind` = 'prediction' and params.output = 'logged.csv'"
    runs = client.search_runs([experiment.experiment_id], wanted)
    assert len(runs) == 1
    run = runs[0]
    assert run.data.params["runtime"] == "onnx"  # the version has an export: the default
    assert run.data.params["model_uri"] == f"models:/{MODEL}/{registration['version']}"
    assert run.data.metrics["n"] == 26 and run.data.metrics["n_failed"] == 2
    assert run.data.metrics["images_per_second"] > 0
    (used,) = run.inputs.dataset_inputs
    assert used.dataset.name == "prediction-input"
    assert {t.key: t.value for t in used.tags}["mlflow.data.context"] == "prediction"
    assert [a.path for a in client.list_artifacts(run.info.run_id, "predictions")] == [
        "predictions/logged.csv"
    ]
    assert len(pd.read_csv(out)) == 26


def test_strict_makes_bad_files_fatal(registered, folder, capsys):
    assert tlp(registered, "incoming", "--strict", "--out", "strict.parquet") == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[-1].startswith("tlp: predict failed: 2 of 26 inputs could not be scored")
    assert "corrupt.png" in lines[-1] and "wrong_shape.npy" in lines[-1]


@pytest.mark.parametrize(
    "args, named",
    [
        (["no/such/folder"], "no/such/folder: no such file or folder"),
        (["incoming", "--model", f"{MODEL}@nosuchalias"], f"{MODEL}@nosuchalias: not in"),
        (["incoming", "--model", "models:/nosuchmodel/1"], "nosuchmodel/1: not in the registry"),
        (["incoming", "--out", "table.xlsx"], "--out table.xlsx: the table is written as"),
        ([], "no INPUT"),
    ],
)
def test_bad_arguments_stop_before_any_work(registered, folder, args, named, capsys):
    project = registered[0]
    before = sorted(project.iterdir())
    assert tlp(registered, *args) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("tlp: predict stopped before any work: ") and named in line
    assert sorted(project.iterdir()) == before  # no table written


def test_onnx_runtime_needs_a_version_with_an_export(registered, folder, capsys):
    from tests.registry_support import open_store, register

    project, store, _ = registered
    ckpt = project / "models" / "candidates" / "full"
    version = register(ckpt, project, open_store(store, project), MODEL)  # the pyfunc alone
    assert tlp(registered, "incoming", "--model", f"{MODEL}/{version}", "--runtime", "onnx") == 2
    assert f"{MODEL} version {version} has no ONNX export" in capsys.readouterr().err


def test_predict_reads_an_s3_prefix(registered, folder, tmp_path, monkeypatch, capsys):
    """Images under s3://bucket/prefix on moto's S3 server, the endpoint from storage params
    and the keys from the AWS environment, as the DVC remote takes them."""
    from tasks.registry.export import OnnxClassifier
    from tests.services import moto_s3

    root, good = folder
    with moto_s3(["incoming"], tmp_path) as s3:
        client = s3.client()
        for path in good[:5]:
            client.upload_file(str(path), "incoming", f"today/{path.name}")
        client.upload_file(str(root / "corrupt.png"), "incoming", "today/corrupt.png")
        client.put_object(Bucket="incoming", Key="elsewhere/x.png", Body=b"not listed")
        for key, value in s3.env.items():
            monkeypatch.setenv(key, value)
        endpoint = f"storage.dvc_remote_endpoint={s3.endpoint}"
        args = ("s3://incoming/today", "--out", "s3.parquet", "--set", endpoint)
        assert tlp(registered, *args) == 0
    assert "predicted 5 of 6 inputs (1 failed)" in capsys.readouterr().out
    table = pd.read_parquet(registered[0] / "s3.parquet").set_index("path")
    assert sorted(table.index) == sorted(
        [f"s3://incoming/today/{p.name}" for p in good[:5]] + ["s3://incoming/today/corrupt.png"]
    )
    assert table.error["s3://incoming/today/corrupt.png"].startswith("cannot read image")
    local = OnnxClassifier(registered[0] / "models" / "export" / "model.onnx")
    expected = local.predict([p.read_bytes() for p in good[:5]]).label.tolist()
    assert [table.label[f"s3://incoming/today/{p.name}"] for p in good[:5]] == expected


def test_an_s3_input_without_s3fs_stops_naming_the_extra(monkeypatch):
    """s3fs comes with the team extra: without it, an S3 input stops before any work."""
    from tasks.registry.prediction import PredictionError, list_inputs

    monkeypatch.setitem(sys.modules, "s3fs", None)  # what an install without it gives
    with pytest.raises(PredictionError, match=r"s3fs.*\.\[team\]"):
        list_inputs(["s3://bucket/images"], Path("."), None)
