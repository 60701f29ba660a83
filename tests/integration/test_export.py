"""The ONNX export of a trained checkpoint: parity with torch on the whole test split, its
metadata, the classifier that reads it, INT8 kept apart, and a failing parity that stops the
register stage before anything is registered."""

from __future__ import annotations

import json
import re
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from tasks.registry.export import (
    ExportError,
    OnnxClassifier,
    calibration_inputs,
    check_parity,
    export_onnx,
    int8_report,
    quantize_int8,
)
from tests.registry_support import first_test_images, register_project, run_register

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def exported(gate_candidates, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("onnx") / "model.onnx"
    return export_onnx(gate_candidates.strong, out, opset=20)


def _target(gate_candidates) -> Path:
    return gate_candidates.project / "data" / "target"


def _test_images(target: Path, n: int) -> list[np.ndarray]:
    return first_test_images(target, n, 1)


def test_export_matches_torch_on_the_whole_test_split(exported, gate_candidates):
    import pandas as pd

    target = _target(gate_candidates)
    parity = check_parity(exported, gate_candidates.strong, target, atol=1e-4)
    manifest = pd.read_parquet(target / "manifest.parquet")
    assert parity["n"] == (manifest.split == "test").sum() > 100
    assert parity["labels_identical"] and parity["max_abs_logit_diff"] <= 1e-4
    assert parity["accuracy_onnx"] > 0.5  # the trained checkpoint, not a blank graph


def test_export_carries_what_a_runtime_needs(exported, gate_candidates):
    import onnx

    from tasks.modeling.models import read_card

    model = onnx.load(str(exported))
    dims = model.graph.input[0].type.tensor_type.shape.dim
    assert model.graph.input[0].name == "images" and model.graph.output[0].name == "logits"
    assert dims[0].dim_param and [d.dim_value for d in dims[1:]] == [1, 16, 16]
    assert model.opset_import[0].version == 20
    card = read_card(gate_candidates.strong)
    meta = {p.key: p.value for p in model.metadata_props}
    assert json.loads(meta["tlp.classes"]) == list(card.classes)
    assert json.loads(meta["tlp.preprocess"]) == card.preprocess.model_dump(mode="json")
    assert meta["tlp.arch"] == "resnet10t" and meta["tlp.strategy"] == card.strategy


def test_onnx_classifier_answers_like_the_pyfunc(exported, gate_candidates):
    from tasks.registry.serving import ImageClassifier

    images = _test_images(_target(gate_candidates), 24)
    pyfunc = ImageClassifier()
    pyfunc.load_context(SimpleNamespace(artifacts={"checkpoint": str(gate_candidates.strong)}))
    expected = pyfunc.predict(None, images)
    onnx = OnnxClassifier(exported)
    got = onnx.predict(images)
    assert list(got.columns) == list(expected.columns)
    assert got["label"].tolist() == expected["label"].tolist()
    np.testing.assert_allclose(
        np.stack(got["probabilities"]), np.stack(expected["probabilities"]), atol=1e-5
    )
    one = onnx.predict(images[0])  # one image: the batch dimension is dynamic
    assert len(one) == 1 and one["label"].iloc[0] == expected["label"].iloc[0]


def test_a_tampered_export_fails_parity_naming_the_numbers(exported, gate_candidates, tmp_path):
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(exported))
    weight = next(w for w in model.graph.initializer if len(w.dims) == 4)
    weight.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(weight) * 1.5, weight.name))
    tampered = tmp_path / "tampered.onnx"
    onnx.save(model, str(tampered))
    with pytest.raises(ExportError) as failed:
        check_parity(tampered, gate_candidates.strong, _target(gate_candidates), atol=1e-4)
    message = str(failed.value)
    assert re.search(r"on \d+ images of the target test split: max \|logit difference\| ", message)
    assert "> export.parity_atol 0.0001" in message and "nothing was registered" in message


def test_int8_is_measured_and_kept_apart(exported, gate_candidates, tmp_path):
    from tasks.data.loading import load_tensors
    from tasks.modeling.models import read_card

    target, cfg = _target(gate_candidates), read_card(gate_candidates.strong).preprocess
    int8 = quantize_int8(exported, tmp_path / "model.int8.onnx", calibration_inputs(target, cfg))
    inputs, labels, _ = load_tensors(target, "test", cfg)
    report = int8_report(exported, int8, inputs, labels)
    assert report["size_ratio"] < 0.5 and report["latency_ratio"] > 0
    assert abs(report["accuracy_change"]) < 0.1 and report["agreement"] > 0.9
    assert OnnxClassifier(int8).classes == OnnxClassifier(exported).classes  # metadata kept
    assert exported.is_file()  # the float export is untouched


def test_failing_parity_registers_nothing_then_the_export_is_reused(gate_candidates, tmp_path):
    from mlflow import MlflowClient

    from tasks.stages import StageFailed

    project = register_project(tmp_path, gate_candidates.project, gate_candidates.strong)
    with pytest.raises(StageFailed, match=r"ExportError: ONNX export disagrees with torch"):
        run_register(project, "export.parity_atol=1e-12")  # float error is ~1e-7
    assert MlflowClient().search_registered_models() == []
    assert not (project / "reports" / "registration.json").exists()
    report = json.loads((project / "reports" / "export.json").read_text())
    assert report["parity"]["passed"] is False and report["parity"]["atol"] == 1e-12
    assert report["reused_export"] is False

    registration = run_register(project)  # the same weights again: the export is reused
    report = json.loads((project / "reports" / "export.json").read_text())
    assert report["reused_export"] is True and report["parity"]["passed"]
    assert registration["version"] == "1"
