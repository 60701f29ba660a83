"""Stage ``register``'s library: the best candidate as a models-from-code pyfunc version,
its lineage tags, and reads of a version. Alias moves live in ``aliases``, retries in
``retries``."""

from __future__ import annotations

from pathlib import Path

import mlflow
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from tasks.core import tracking
from tasks.core.context import StageContext
from tasks.registry.retries import is_transient
from tasks.registry.serving import CHECKPOINT_ARTIFACT


def _pip_requirements() -> list[str]:
    from importlib.metadata import version

    packages = [
        "torch",
        "torchvision",
        "timm",
        "safetensors",
        "numpy",
        "pandas",
        "pillow",
        "pydantic",
    ]
    return [f"{name}=={version(name)}" for name in packages] + [f"mlflow=={mlflow.__version__}"]


def input_example(example_image: bytes | None, size: int, channels: int) -> list:
    """One raw uint8 image as nested lists (what a REST client sends in ``inputs``);
    ``example_image``: an encoded image (a prepared dataset's shard row), or None (zeros)."""
    import numpy as np

    if example_image is not None:
        from tasks.data.preprocessing import decode_image

        image = decode_image(example_image, channels, "the input example")
    else:
        shape = (size, size) if channels == 1 else (size, size, channels)
        image = np.zeros(shape, np.uint8)
    return [image.tolist()]


def serving_config(max_image_pixels: int | None = None) -> dict:
    """The model config logged with the pyfunc (``model_inputs.InputPolicy``): the pixel
    limit of an image (the project's ``data.max_image_pixels``), the images one scoring
    request may hold, and no file paths (``allow_paths_under``: a loader or
    ``TLP_SERVE_ALLOW_PATHS_UNDER`` may name a root)."""
    from tasks.registry.model_inputs import MAX_IMAGES_PER_REQUEST

    if max_image_pixels is None:
        from tasks.core.params import default_section

        max_image_pixels = default_section("data").max_image_pixels
    return {
        "max_image_pixels": int(max_image_pixels),
        "max_images_per_request": MAX_IMAGES_PER_REQUEST,
        "allow_paths_under": None,
    }


def log_model(
    ckpt_dir: Path,
    registered_model_name: str,
    example_image: bytes | None = None,
    max_image_pixels: int | None = None,
):
    """Log the checkpoint as a models-from-code pyfunc (nothing pickled) and register it.

    The signature comes from ``ImageClassifier.predict``'s ``list[Any]`` hint: MLflow records
    it without coercing inputs, so arrays of any image shape and file paths pass through;
    the input example is one real uint8 image; the class names, the preprocessing and the
    channel conversion of the card go into the model metadata, and what the model takes into
    the registered version's description (``version_description``); what it accepts and its
    limits into the model config (``serving_config``). MLflow's console prints
    and its two notes about that hint are kept off the terminal
    (``tracking.quiet_model_logging``), for every caller.
    """
    from tasks.modeling.models import read_card

    card = read_card(ckpt_dir)
    with tracking.quiet_model_logging():
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=str(Path(__file__).with_name("_pyfunc_entry.py")),
            artifacts={CHECKPOINT_ARTIFACT: str(ckpt_dir)},
            pip_requirements=_pip_requirements(),  # explicit: inferring them costs a subprocess
            registered_model_name=registered_model_name,
            model_config=serving_config(max_image_pixels),
            input_example=input_example(
                example_image, card.preprocess.image_size, card.preprocess.channels
            ),
            metadata={
                "classes": list(card.classes),
                "arch": card.arch,
                "strategy": card.strategy,
                "input": "uint8 (0-255) or float (0-1) images HxW or HxWxC, one or a batch, "
                "or base64-encoded PNG/JPEG; file paths only under model_config "
                "allow_paths_under",
                "output": "label, probability, probabilities (in the order of classes)",
                "preprocess": card.preprocess.model_dump(mode="json"),
                "input_conversion": card.input_conversion,
            },
        )
    if info.registered_model_version is not None:
        MlflowClient().update_model_version(
            registered_model_name, str(info.registered_model_version), version_description(card)
        )
    return info


def version_description(card) -> str:
    """What a registered version takes, said for people: the card's preprocessing, which
    the served model applies itself, and how its training images were converted."""
    from tasks.data.preprocessing import describe_input

    described = f"{card.arch} ({card.strategy or 'source'}), {card.num_classes} classes. "
    described += (
        f"Takes raw images and preprocesses them itself: {describe_input(card.preprocess)}."
    )
    if card.input_conversion:
        described += f" Training data: {card.input_conversion}."
    return described


def tag_version(name: str, version: str, tags: dict[str, str]) -> None:
    client = MlflowClient()
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, value)


def version_tags(name: str, version: str) -> dict[str, str]:
    return dict(MlflowClient().get_model_version(name, version).tags)


def version_aliases(name: str, version: str) -> list[str]:
    return list(MlflowClient().get_model_version(name, version).aliases)


def version_exists(name: str, version: str) -> bool:
    try:
        MlflowClient().get_model_version(name, version)
        return True
    except MlflowException as exc:
        if is_transient(exc):
            raise
        return False


def source_tags(ctx: StageContext) -> dict[str, str]:
    """How the source model was made, as the pretrain stage recorded it: its objective and,
    self-supervised, the images it learnt from (``source.objective``, ``source.images``);
    the pretrained checkpoint it came from (``source.checkpoint``,
    ``source.checkpoint_sha256``, ...), if any."""
    from tasks.core.context import read_json
    from tasks.modeling.checkpoints import record_tags

    try:
        report = read_json(ctx.layout.pretrain_report)
    except (OSError, ValueError):
        return {}
    tags = {f"source.{k}": str(report[k]) for k in ("objective", "images") if report.get(k)}
    record = report.get("checkpoint")
    return tags | (record_tags(record) if record else {})


def search_tags(ctx: StageContext, strategy: str) -> dict[str, str]:
    """The values a hyperparameter search chose for the registered candidate, from its
    report (``search.best.<key>``, ``search.trials``, ``search.best_val_accuracy``,
    ``search.default_val_accuracy``); none when it was trained with ``transfer.*`` as given."""
    from tasks.core.context import candidate_report, read_json

    try:
        search = read_json(candidate_report(ctx.layout, strategy)).get("search")
    except (OSError, ValueError):
        return {}
    if not search:
        return {}
    trials = search["complete"] + search["pruned"] + search["failed"]
    return {
        **{f"search.best.{k}": str(v) for k, v in search["best_params"].items()},
        "search.trials": str(trials),
        "search.best_val_accuracy": f"{search['best_value']:.4f}",
        "search.default_val_accuracy": f"{search['default_value']:.4f}",
    }


def lineage_tags(ctx: StageContext) -> dict[str, str]:
    """Git commit, params hash, DVC hashes of data and checkpoints, Prefect and MLflow runs,
    and the pretrained checkpoint the source came from."""
    from tasks.core import versioning

    commit, dirty = versioning.git_revision(ctx.project_dir)
    tags = {
        "git_commit": commit,
        "git_dirty": str(dirty).lower(),
        "params_hash": ctx.params.digest(),
        "prefect_flow_run_id": ctx.flow_run.get("id", "none"),
        "prefect_flow_run_url": ctx.flow_run.get("url", "none"),
        "mlflow_parent_run_id": ctx.parent_run_id or "none",
    }
    for path, digest in versioning.output_hashes(ctx.project_dir).items():
        if path.startswith(("data/", "models/")):
            tags[f"dvc.{path}"] = digest
    return {**tags, **source_tags(ctx)}


def first_test_image(layout) -> bytes | None:
    """The encoded bytes of the target's first test image (the model's input example)."""
    from tasks.data.manifest import read_manifest
    from tasks.data.shards import read_image_bytes

    manifest = read_manifest(layout.target_data)
    test = manifest[manifest["split"] == "test"]
    return read_image_bytes(layout.target_data, test.head(1))[0] if len(test) else None


LINEAGE_FILES = ("params.resolved.yaml", "dvc.lock", "reports/metrics.json")


def lineage_files(project_dir: Path) -> list[Path]:
    return [project_dir / f for f in LINEAGE_FILES if (project_dir / f).is_file()]
