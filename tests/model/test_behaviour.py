"""Behavioural tests of a registered model (in the spirit of Made-With-ML's tests/model):
it is loaded from the registry exactly as users load it and probed on the frozen test split."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.registry_support import MODEL, open_store, register

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def registered(gate_candidates, tmp_path_factory):
    """The strong candidate registered in a fresh store, loaded back as a pyfunc."""
    import mlflow

    from tasks.data.loading import decode_rows
    from tasks.data.manifest import read_manifest
    from tasks.data.shards import export_images

    base = tmp_path_factory.mktemp("behaviour")
    exp = open_store(f"sqlite:///{base}/mlflow.db", gate_candidates.project)
    version = register(gate_candidates.strong, gate_candidates.project, exp)
    model = mlflow.pyfunc.load_model(f"models:/{MODEL}/{version}")
    target = gate_candidates.project / "data" / "target"
    manifest = read_manifest(target)
    test = manifest[manifest.split == "test"]
    images = np.stack(decode_rows(target, test, 1))
    files = export_images(target, test, base / "files")  # for what the model reads from files
    return model, images, test.class_name.astype(str).to_numpy(), [str(f) for f in files]


def shift(images: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """Translate by (dy, dx) pixels, repeating the edge (what a slightly off-centre scan gives)."""
    pad = np.pad(images, ((0, 0), (1, 1), (1, 1)), mode="edge")
    h, w = images.shape[1:]
    return pad[:, 1 - dy : 1 - dy + h, 1 - dx : 1 - dx + w]


@pytest.mark.parametrize("dy,dx", [(0, 1), (1, 0), (0, -1), (-1, 0)])
def test_invariance_to_one_pixel_shifts(registered, dy, dx):
    model, images, _, _ = registered
    before = model.predict(images)["label"].to_numpy()
    after = model.predict(shift(images, dy, dx))["label"].to_numpy()
    assert (before == after).mean() >= 0.8


def test_minimum_functionality_for_every_class(registered):
    model, images, truth, _ = registered
    predicted = model.predict(images)["label"].astype(str).to_numpy()
    per_class = {c: (predicted[truth == c] == c).mean() for c in np.unique(truth)}
    assert len(per_class) == 10
    weak = {c: round(a, 3) for c, a in per_class.items() if a < 0.6}
    assert not weak, f"classes below 60% accuracy: {weak}"


def test_paths_and_arrays_give_the_same_answer(registered):
    """Paths only when the loader allows a root; then they answer as arrays do."""
    import mlflow
    from mlflow import MlflowClient

    model, images, _, paths = registered
    with pytest.raises(ValueError, match="base64-encoded PNG or JPEG"):
        model.predict(paths[:1])
    root = {"allow_paths_under": str(Path(paths[0]).parents[2])}
    version = MlflowClient().search_model_versions(f"name='{MODEL}'")[0].version
    allowed = mlflow.pyfunc.load_model(f"models:/{MODEL}/{version}", model_config=root)
    by_array = model.predict(images[:40])
    by_path = allowed.predict(paths[:40])
    assert by_array["label"].tolist() == by_path["label"].tolist()
    probs = np.array(by_array["probabilities"].tolist())
    assert probs.shape == (40, 10) and np.allclose(probs.sum(1), 1, atol=1e-5)


def test_signature_input_example_and_class_names_are_stored(registered):
    model, images, _, _ = registered
    meta = model.metadata
    assert meta.signature is not None and meta.saved_input_example_info is not None
    assert meta.metadata["classes"] == [str(d) for d in range(10)]
    example = model.input_example
    assert np.asarray(example).shape == (1, 8, 8)
    assert model.predict(example)["label"].iloc[0] in meta.metadata["classes"]
