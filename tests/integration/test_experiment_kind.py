"""The MLflow experiment opens in the UI's model-training view: it is created with MLflow 3's
``mlflow.experimentKind`` tag, an older experiment without the tag gets it, and a kind a
person chose is kept."""

from __future__ import annotations

import pytest

from tasks.core import tracking

pytestmark = pytest.mark.integration


def test_experiment_is_created_and_tagged_for_model_training(tmp_path):
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    new = tracking.configure(uri, tmp_path, "transfer-pipeline")
    client = MlflowClient(uri)
    assert (
        client.get_experiment(new).tags[tracking.EXPERIMENT_KIND_TAG] == "custom_model_development"
    )

    older = client.create_experiment("made-before-the-tag")
    chosen = client.create_experiment(
        "chosen", tags={tracking.EXPERIMENT_KIND_TAG: "genai_development"}
    )
    assert tracking.configure(uri, tmp_path, "made-before-the-tag") == older
    assert tracking.configure(uri, tmp_path, "chosen") == chosen
    assert (
        client.get_experiment(older).tags[tracking.EXPERIMENT_KIND_TAG] == tracking.MODEL_TRAINING
    )
    assert client.get_experiment(chosen).tags[tracking.EXPERIMENT_KIND_TAG] == "genai_development"
