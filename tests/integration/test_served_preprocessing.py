"""The registered model preprocesses raw images exactly as training did, and its card is a
source of preprocessing for the next model.

One real checkpoint (resnet10t, 3 channels, bicubic, per-channel stats, random weights: the
outputs still depend on every pixel) is registered in a real SQLite MLflow store in a temp
dir. ``models:/NAME@ALIAS`` then fills null preprocess values from its card, and the served
pyfunc, given raw grey and RGB uint8 arrays, gives the probabilities the training-time path
(image files -> ``load_tensors`` -> the model) gives.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.registry_support import open_store

pytestmark = pytest.mark.integration

MODEL = "tlp-preprocess"
CLASSES = ("a", "b", "c")
NULLS = [f"preprocess.{k}=null" for k in ("image_size", "channels", "mean", "std", "interpolation")]


def _images() -> list[np.ndarray]:
    """Grey and RGB images of several sizes, none of them the model's."""
    rng = np.random.default_rng(0)
    shapes = [(20, 20), (31, 17), (20, 20, 3), (12, 40, 3), (28, 28)]
    return [rng.integers(0, 256, shape, dtype=np.uint8) for shape in shapes]


def _dataset(root: Path, images: list[np.ndarray]) -> Path:
    """The images as a prepared dataset (PNG shards + manifest), as the prepare stage writes."""
    import io

    from PIL import Image

    from tasks.data.manifest import MANIFEST, MANIFEST_COLUMNS, write_manifest
    from tasks.data.shards import write_shards

    root.mkdir(parents=True)
    rows, encoded = [], []
    for i, image in enumerate(images):
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="PNG")
        encoded.append(buffer.getvalue())
        values = {**dict.fromkeys(MANIFEST_COLUMNS, 0), "path": f"images/{i}.png", "label": i % 3}
        values.update(split="test", mode="L" if image.ndim == 2 else "RGB")
        rows.append(tuple(values.values()))
    manifest = write_manifest(root, rows, {"classes": list(CLASSES)})
    write_shards(root, manifest, encoded.__getitem__).to_parquet(root / MANIFEST, index=False)
    return root


@pytest.fixture(scope="module")
def registered(tmp_path_factory):
    """(project dir, tracking URI, checkpoint dir) with the checkpoint registered @champion."""
    import mlflow
    from mlflow import MlflowClient

    from tasks.core.params import default_section
    from tasks.data.preprocessing import conversion_note
    from tasks.modeling.models import ModelCard, create_model, save_checkpoint
    from tasks.registry import publishing

    base = tmp_path_factory.mktemp("served")
    cfg = default_section(
        "preprocess",
        image_size=24,
        channels=3,
        mean=(0.5, 0.4, 0.3),
        std=(0.2, 0.25, 0.3),
        interpolation="bicubic",
    )
    card = ModelCard(
        arch="resnet10t",
        classes=CLASSES,
        preprocess=cfg,
        strategy="full",
        input_conversion=conversion_note((1, 3), 3),
    )
    ckpt = save_checkpoint(create_model("resnet10t", 3, 3, seed=0).eval(), card, base / "full")
    uri = f"sqlite:///{base}/mlflow.db"
    experiment = open_store(uri, base)
    with mlflow.start_run(experiment_id=experiment):
        info = publishing.log_model(ckpt, MODEL)
    MlflowClient().set_registered_model_alias(MODEL, "champion", info.registered_model_version)
    return base, uri, ckpt


def test_served_model_matches_the_training_path_on_grey_and_rgb(registered, tmp_path):
    import mlflow
    import torch

    from tasks.data.loading import load_tensors
    from tasks.data.preprocessing import preprocess
    from tasks.modeling.models import load_checkpoint

    _, _, ckpt = registered
    images = _images()
    served = mlflow.pyfunc.load_model(f"models:/{MODEL}@champion").predict(images)

    model, card = load_checkpoint(ckpt)
    inputs, _, _ = load_tensors(_dataset(tmp_path / "data", images), "test", card.preprocess)
    assert inputs.shape == (len(images), 3, 24, 24)
    with torch.no_grad():
        trained = torch.softmax(model(inputs), dim=1).numpy()
    probabilities = np.stack(served["probabilities"].to_list())
    assert np.allclose(probabilities, trained, atol=1e-5)
    assert list(served["label"]) == [CLASSES[i] for i in trained.argmax(1)]
    # not vacuous: the same images resized bilinearly give visibly other outputs
    bilinear = card.preprocess.model_copy(update={"interpolation": "bilinear"})
    with torch.no_grad():
        other = torch.softmax(model(preprocess(images, bilinear)), dim=1).numpy()
    assert np.abs(other - trained).max() > 1e-3


def test_the_version_says_what_it_takes_and_how_data_were_converted(registered):
    from mlflow import MlflowClient
    from mlflow.models import get_model_info

    version = MlflowClient().get_model_version_by_alias(MODEL, "champion")
    assert "24x24 pixels (bicubic resizing), 3 channel(s)" in version.description
    assert "Training data: some of the images are grey: they are repeated" in version.description
    metadata = get_model_info(f"models:/{MODEL}@champion").metadata
    assert metadata["preprocess"]["interpolation"] == "bicubic"
    assert metadata["input_conversion"].startswith("some of the images are grey")


def test_a_registered_version_fills_params_from_its_card(registered, project_root):
    from tasks.core.params import ParamsError, resolve_params

    project, uri, _ = registered
    (project / "params.yaml").write_text((project_root / "params.yaml").read_text())
    store = f"storage.tracking_uri={uri}"
    for ref in (f"models:/{MODEL}@champion", f"models:/{MODEL}/1"):
        p = resolve_params(
            project / "params.yaml", overrides=[f"pretrain.checkpoint={ref}", store, *NULLS]
        )
        assert p.model.arch == "resnet10t"
        assert (p.preprocess.image_size, p.preprocess.interpolation) == (24, "bicubic")
        assert p.preprocess.mean == (0.5, 0.4, 0.3)
    relative = resolve_params(  # a relative sqlite path is in the project
        project / "params.yaml",
        overrides=[f"pretrain.checkpoint=models:/{MODEL}@champion", *NULLS[1:4]],
    )  # channels, mean and std from the card, image size and interpolation as set
    assert relative.preprocess.channels == 3 and relative.preprocess.std == (0.2, 0.25, 0.3)
    assert relative.preprocess.image_size == 32
    with pytest.raises(ParamsError, match=r"pretrain\.checkpoint: models:/tlp-preprocess@gone"):
        resolve_params(
            project / "params.yaml",
            overrides=[f"pretrain.checkpoint=models:/{MODEL}@gone", store],
        )
    with pytest.raises(ParamsError, match="no MLflow store at"):
        resolve_params(
            project / "params.yaml",
            overrides=[
                f"pretrain.checkpoint=models:/{MODEL}@champion",
                "storage.tracking_uri=sqlite:///none.db",
            ],
        )
