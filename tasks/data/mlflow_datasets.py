"""The prepared splits as MLflow datasets, so each run's "Datasets" panel names what it read:
``target/train``, ``source/test``, ... with the split's manifest rows as the dataset (its
schema and row count; the images stay in the dataset's shards), ``data/<role>`` (the DVC
path) as the source, and dvc.lock's hash of that directory as the digest while it still
describes the files (``tasks.core.versioning.current_dir_hashes``), MLflow's hash of the
rows otherwise.

The context of each is its split's role: ``training`` (train, and the unlabelled pool),
``validation`` or ``test``.
"""

from __future__ import annotations

import warnings
from pathlib import Path

from tasks.data.manifest import MANIFEST, SPLITS, read_manifest

CONTEXT = {"train": "training", "unlabeled": "training", "val": "validation", "test": "test"}
ALL = {"target": SPLITS, "source": SPLITS}  # the target first: the UI shows the first


def split_datasets(project_dir: Path, uses: dict[str, tuple[str, ...]]) -> list[tuple]:
    """``(dataset, context)`` for each split of each role in ``uses`` (``{"target": ("train",
    "val")}``) that has rows; a role whose manifest is missing is left out."""
    import mlflow.data
    from mlflow.data.dataset_source_registry import get_dataset_source_from_json

    from tasks.core.versioning import current_dir_hashes

    dirs = {role: f"data/{role}" for role in uses}
    digests = current_dir_hashes(project_dir, {d: MANIFEST for d in dirs.values()})
    found = []
    for role, splits in uses.items():
        manifest_file = project_dir / dirs[role] / MANIFEST
        if not manifest_file.is_file():
            continue
        manifest = read_manifest(project_dir / dirs[role])
        for split in splits:
            rows = manifest[manifest["split"] == split].reset_index(drop=True)
            if rows.empty:
                continue
            with warnings.catch_warnings():  # MLflow's hint on integer columns is for models
                warnings.simplefilter("ignore", UserWarning)
                dataset = mlflow.data.from_pandas(
                    rows,
                    source=get_dataset_source_from_json(f'{{"uri": "{dirs[role]}"}}', "local"),
                    targets="label",
                    name=f"{role}/{split}",
                    digest=digests.get(dirs[role]),
                )
                dataset.schema  # inferred (once) here, inside the filter  # noqa: B018
            found.append((dataset, CONTEXT[split]))
    return found


def log_datasets(datasets: list[tuple], run_id: str | None = None) -> None:
    """Record ``(dataset, context)`` pairs as inputs of a run (the active one by default)."""
    import mlflow
    from mlflow import MlflowClient
    from mlflow.entities import Dataset, DatasetInput, InputTag

    if not datasets:
        return
    run_id = run_id or mlflow.active_run().info.run_id
    inputs = [
        DatasetInput(Dataset(**ds.to_dict()), [InputTag("mlflow.data.context", context)])
        for ds, context in datasets
    ]
    MlflowClient().log_inputs(run_id, inputs)


def log_splits(
    project_dir: Path, uses: dict[str, tuple[str, ...]], run_id: str | None = None
) -> list[tuple]:
    """``split_datasets`` logged on a run; returns them, to log on other runs too."""
    datasets = split_datasets(project_dir, uses)
    log_datasets(datasets, run_id)
    return datasets
