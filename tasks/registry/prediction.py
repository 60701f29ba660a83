"""Batch scoring for ``tlp predict``: a registered model over a folder, a manifest, files or
an S3 prefix, into one Parquet or CSV table, logged as an MLflow run.

The steps, each a function: ``list_inputs`` turns the arguments into a list of image
locations (and stops on a missing path, a manifest without a ``path`` column, an empty
folder or prefix); ``choose_model`` resolves the model reference in the registry and picks
the runtime (the version's ONNX export when it has one, ``tasks/registry/export.py``, else
the pyfunc); ``load_runtime`` loads it; ``score`` reads and predicts in batches, with a
progress bar on a terminal; ``write_predictions`` writes the table. A file that cannot be
read, or holds an array of a shape no image has, becomes a row with its ``error`` and no
prediction: the other files are scored (``--strict`` makes any such row fatal, in the CLI).
``predict`` runs them all inside an MLflow run of the project's experiment, tagged
``tlp.kind=prediction``, with the list of inputs as its dataset (``mlflow.log_input``,
context ``prediction``) and the table as its artifact.

Inputs are image files (png, jpg, bmp, webp, tif) or ``.npy`` arrays (uint8 HxW or HxWxC,
or floats in [0, 1]): what the pyfunc takes as arrays, saved one per file. A prepared
dataset's ``manifest.parquet`` (with ``shard`` and ``row`` columns) is read from its shards
(``ShardItem``): its rows keep their manifest path under the dataset folder as their name.
"""

from __future__ import annotations

import io
import logging
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

ARRAY_SUFFIX = ".npy"
MANIFEST_SUFFIXES = (".csv", ".parquet")
OUTPUT_SUFFIXES = (".parquet", ".csv")
RUNTIMES = ("onnx", "pyfunc")
KIND_TAG = "tlp.kind"
PROBABILITY_PREFIX = "prob_"
SHOWN_FAILURES = 10  # at most this many failed files named in one line


class PredictionError(ValueError):
    """The arguments of a prediction cannot work (no such path, model, alias or runtime, a
    bad output name); raised before any image is read. The message names which and the fix."""


def _image_suffixes() -> frozenset[str]:
    from tasks.data.ingest import IMAGE_SUFFIXES

    return IMAGE_SUFFIXES | {ARRAY_SUFFIX}


def is_s3(location: str) -> bool:
    return location.startswith("s3://")


def s3_filesystem(endpoint: str | None):
    """s3fs with the project's S3 endpoint (``storage.dvc_remote_endpoint``, e.g. MinIO)
    when set; keys and region come from the usual AWS environment. s3fs comes with the
    ``team`` extra (dvc-s3): without it an S3 input stops before any work, saying so."""
    try:
        import s3fs
    except ImportError:
        raise PredictionError(
            "s3:// inputs need s3fs, which is not installed (pip install -e '.[team]' "
            "installs it with dvc-s3)"
        ) from None

    return s3fs.S3FileSystem(
        endpoint_url=endpoint or None, config_kwargs={"retries": {"max_attempts": 2}}
    )


def _list_s3(prefix: str, fs) -> list[str]:
    try:
        found = fs.find(prefix)
    except Exception as exc:  # credentials, bucket, endpoint: botocore's and s3fs's own
        raise PredictionError(f"{prefix}: cannot list ({type(exc).__name__}: {exc})") from None
    suffixes = _image_suffixes()
    return [f"s3://{key}" for key in sorted(found) if Path(key).suffix.lower() in suffixes]


class ShardItem(str):
    """An image of a prepared dataset: named by its manifest path under the dataset folder
    (the string, what the predictions table shows), read from row ``row`` of ``shard``."""

    shard: Path
    row: int

    def __new__(cls, name: str, shard: Path, row: int) -> ShardItem:
        item = super().__new__(cls, name)
        item.shard, item.row = shard, row
        return item


def _read_manifest(path: Path) -> list[str]:
    """A CSV or Parquet table with a ``path`` column; relative paths are relative to the
    manifest's folder. A prepared dataset's ``manifest.parquet`` (``shard`` and ``row``
    columns) lists its images in its shards: they are read from there."""
    import pandas as pd

    try:
        table = pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path)
    except Exception as exc:
        raise PredictionError(f"{path}: cannot read the manifest ({exc})") from None
    if "path" not in table.columns:
        columns = ", ".join(map(str, table.columns[:8]))
        raise PredictionError(f"{path}: a manifest needs a 'path' column (it has: {columns})")
    folder = path.parent.resolve()
    if {"shard", "row"} <= set(table.columns):
        return [
            ShardItem(str(folder / p), folder / s, int(r))
            for p, s, r in zip(table["path"].astype(str), table["shard"], table["row"], strict=True)
        ]
    out = []
    for value in table["path"].astype(str):
        out.append(value if is_s3(value) else str((path.parent / value).resolve()))
    return out


def list_inputs(inputs: Sequence[str], base: Path, endpoint: str | None = None) -> list[str]:
    """Image locations (absolute paths or s3:// URLs, sorted within a folder or prefix, in
    argument order, each once) of every INPUT: a folder (recursively), a manifest, an image
    or array file, or an ``s3://bucket/prefix``. Relative paths are relative to ``base``."""
    if not inputs:
        raise PredictionError("no INPUT: give a folder, a manifest, image files or s3://...")
    found: list[str] = []
    suffixes, fs = _image_suffixes(), None
    for spec in inputs:
        if is_s3(spec):
            fs = fs or s3_filesystem(endpoint)
            listed = _list_s3(spec, fs)
        else:
            path = (base / Path(spec).expanduser()).resolve()
            if not path.exists():
                raise PredictionError(
                    f"{spec}: no such file or folder (INPUT is a folder, a manifest "
                    ".csv/.parquet with a path column, image files or s3://bucket/prefix)"
                )
            if path.is_dir():
                listed = [str(p) for p in sorted(path.rglob("*")) if p.suffix.lower() in suffixes]
            elif path.suffix.lower() in MANIFEST_SUFFIXES:
                listed = _read_manifest(path)
            else:
                listed = [str(path)]
        if not listed:
            raise PredictionError(f"{spec}: no image files in it ({', '.join(sorted(suffixes))})")
        found += listed
    return list(dict.fromkeys(found))


def check_output(out: Path, base: Path) -> Path:
    """The output file (relative to ``base``), refused unless .parquet or .csv."""
    if out.suffix.lower() not in OUTPUT_SUFFIXES:
        raise PredictionError(
            f"--out {out}: the table is written as .parquet or .csv (got "
            f"{out.suffix or 'no extension'})"
        )
    path = (base / out.expanduser()).resolve()
    if path.is_dir():
        raise PredictionError(f"--out {out}: is a folder; give a file name")
    return path


@dataclass(frozen=True)
class ModelChoice:
    """A registered version and how to run it."""

    name: str
    version: str
    ref: str  # as given (NAME@ALIAS, models:/NAME/VERSION, ...)
    runtime: str  # onnx | pyfunc
    run_id: str  # the register run, which holds the ONNX export
    onnx_artifact: str | None  # artifact path of the export in that run

    @property
    def uri(self) -> str:
        return f"models:/{self.name}/{self.version}"


def choose_model(ref: str, runtime: str | None = None) -> ModelChoice:
    """Resolve ``models:/NAME@ALIAS``, ``NAME@ALIAS`` or ``NAME/VERSION`` once (an alias moved
    meanwhile does not mix versions) and pick the runtime: the version's ONNX export when it
    has one (its tag ``export.onnx``), else the pyfunc."""
    from tasks.registry.lineage import LineageError, resolve_version

    bare = ref.removeprefix("models:/")
    try:
        mv = resolve_version(bare)
    except LineageError as exc:
        raise PredictionError(f"--model {exc}") from None
    tags = dict(mv.tags)
    onnx = tags.get("export.onnx")
    onnx = None if onnx in (None, "", "none") else onnx
    if runtime is None:
        runtime = "onnx" if onnx else "pyfunc"
    if runtime == "onnx" and not onnx:
        raise PredictionError(
            f"--runtime onnx: {mv.name} version {mv.version} has no ONNX export (registered "
            "before exports or with export.onnx: false); use --runtime pyfunc"
        )
    run_id = tags.get("register_run_id") or mv.run_id
    return ModelChoice(mv.name, str(mv.version), ref, runtime, run_id, onnx)


class PyfuncRuntime:
    """The registered pyfunc (``tasks/registry/serving.py``), given decoded arrays."""

    def __init__(self, uri: str) -> None:
        import mlflow.pyfunc

        self.model = mlflow.pyfunc.load_model(uri)
        meta = self.model.metadata.metadata or {}
        if "classes" not in meta:
            raise PredictionError(f"{uri}: the model's metadata has no class list")
        self.classes = tuple(meta["classes"])
        # files are decoded as the pyfunc decodes paths; RGB when unknown (it converts)
        self.channels = int(meta.get("preprocess", {}).get("channels", 3))

    def probabilities(self, images: list[np.ndarray]) -> np.ndarray:
        frame = self.model.predict(images)
        return np.asarray(frame["probabilities"].tolist(), dtype=np.float64)


class OnnxRuntime:
    """The version's ONNX export on onnxruntime (``OnnxClassifier``)."""

    def __init__(self, path: Path, threads: int | None) -> None:
        from tasks.registry.export import OnnxClassifier

        self.model = OnnxClassifier(path, threads)
        self.classes = self.model.classes
        self.channels = self.model.preprocess.channels

    def probabilities(self, images: list[np.ndarray]) -> np.ndarray:
        return self.model.probabilities(images).astype(np.float64)


def load_runtime(choice: ModelChoice, scratch: Path, threads: int | None = None):
    """The chosen runtime, loaded (the ONNX file downloaded from the register run) and
    warmed up on one blank image, so that the throughput measured later is the steady one."""
    if choice.runtime == "pyfunc":
        runtime = PyfuncRuntime(choice.uri)
    else:
        from mlflow.artifacts import download_artifacts

        path = download_artifacts(
            run_id=choice.run_id, artifact_path=choice.onnx_artifact, dst_path=str(scratch)
        )
        runtime = OnnxRuntime(Path(path), threads)
    runtime.probabilities([np.zeros((8, 8), np.uint8)])
    return runtime


def decode(name: str, data: bytes | None, channels: int) -> np.ndarray:
    """One input's bytes (or, for a local file, its path when ``data`` is None) as an array
    the model takes; a ValueError names what is wrong with it."""
    from tasks.data.preprocessing import read_image

    source = io.BytesIO(data) if data is not None else name
    if name.lower().endswith(ARRAY_SUFFIX):
        try:
            arr = np.load(source, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise ValueError(f"cannot read array ({exc})") from None
        if not (arr.ndim == 2 or (arr.ndim == 3 and arr.shape[-1] in (1, 3, 4))) or not all(
            arr.shape[:2]
        ):
            raise ValueError(
                f"array of shape {arr.shape} is not an image (HxW or HxWxC, C 1, 3 or 4)"
            )
        return arr
    try:
        return read_image(source, channels)
    except ValueError as exc:
        raise ValueError(str(exc).removeprefix(f"{source}: ")) from None


def _read_shard_items(items: list[ShardItem]) -> dict[str, Any]:
    """``{item: encoded bytes, or the exception}``, one read per shard (its row groups)."""
    from tasks.data.shards import read_shard_rows

    contents: dict[str, Any] = {}
    for shard in dict.fromkeys(x.shard for x in items):
        chosen = [x for x in items if x.shard == shard]
        try:
            found = read_shard_rows(shard, [x.row for x in chosen])
        except Exception as exc:  # a missing or damaged shard: its rows fail, others score
            found = [exc] * len(chosen)
        contents |= {str(x): data for x, data in zip(chosen, found, strict=True)}
    return contents


def _read_batch(items: list[str], channels: int, fs) -> list[np.ndarray | str]:
    """Each item decoded, or the error message saying why it could not be."""
    contents: dict[str, Any] = {}
    remote = [x for x in items if is_s3(x)]
    if remote:
        contents = fs.cat(remote, on_error="return")
    contents |= _read_shard_items([x for x in items if isinstance(x, ShardItem)])
    out: list[np.ndarray | str] = []
    for item in items:
        data = contents.get(item.removeprefix("s3://"), contents.get(item))
        if isinstance(data, Exception):
            out.append(f"cannot read ({type(data).__name__}: {data})")
            continue
        try:
            out.append(decode(item, data, channels))
        except (OSError, ValueError) as exc:
            out.append(str(exc))
    return out


def _predict_batch(runtime, arrays: list[np.ndarray]) -> list[np.ndarray | str]:
    """Probabilities per array; when the batch fails, each array alone, so that one bad
    input is named and the others are still scored."""
    try:
        return list(runtime.probabilities(arrays))
    except Exception:
        if len(arrays) == 1:
            raise
    out: list[np.ndarray | str] = []
    for arr in arrays:
        try:
            out.append(runtime.probabilities([arr])[0])
        except Exception as exc:
            out.append(" ".join(str(exc).split()) or type(exc).__name__)
    return out


@dataclass
class Scored:
    """What ``score`` produced: the table, and how long the scoring took."""

    table: Any  # pandas.DataFrame
    seconds: float
    failed: list[tuple[str, str]] = field(default_factory=list)  # (path, error)

    @property
    def n(self) -> int:
        return len(self.table)

    @property
    def images_per_second(self) -> float:
        return self.n / self.seconds if self.seconds > 0 else float("nan")


def score(
    runtime,
    items: list[str],
    batch_size: int,
    fs=None,
    progress: bool = True,
    on_batch: Callable[[int], None] | None = None,
) -> Scored:
    """Read and predict every item in batches of ``batch_size``. Columns: path, label (the
    class name, as the pyfunc answers), class_index, probability, one ``prob_<class>``
    column per class, error (empty when the item was scored)."""
    from concurrent.futures import ThreadPoolExecutor

    from tqdm.auto import tqdm

    classes = list(runtime.classes)
    rows: list[dict[str, Any]] = []
    failed: list[tuple[str, str]] = []
    chunks = [items[i : i + batch_size] for i in range(0, len(items), batch_size)]
    started = time.perf_counter()
    bar = tqdm(total=len(items), unit="img", desc="predict", disable=None if progress else True)
    reader = ThreadPoolExecutor(max_workers=1)  # reads the next batch while this one runs
    ahead = reader.submit(_read_batch, chunks[0], runtime.channels, fs) if chunks else None
    for k, chunk in enumerate(chunks):
        decoded = ahead.result()
        if k + 1 < len(chunks):
            ahead = reader.submit(_read_batch, chunks[k + 1], runtime.channels, fs)
        good = [j for j, x in enumerate(decoded) if not isinstance(x, str)]
        results: list[np.ndarray | str] = list(decoded)
        if good:
            predicted = _predict_batch(runtime, [decoded[j] for j in good])
            for j, p in zip(good, predicted, strict=True):
                results[j] = p
        for path, result in zip(chunk, results, strict=True):
            rows.append(_row(path, result, classes))
            if isinstance(result, str):
                failed.append((path, result))
        bar.update(len(chunk))
        if on_batch:
            on_batch(len(chunk))
    reader.shutdown()
    bar.close()
    return Scored(_table(rows, classes), time.perf_counter() - started, failed)


def _row(path: str, result: np.ndarray | str, classes: list[str]) -> dict[str, Any]:
    if isinstance(result, str):
        return {"path": str(path), "error": result}
    best = int(np.argmax(result))
    row = {"path": str(path), "label": classes[best], "class_index": best}
    row["probability"] = float(result[best])
    row |= {f"{PROBABILITY_PREFIX}{c}": float(p) for c, p in zip(classes, result, strict=True)}
    return {**row, "error": ""}


def _table(rows: list[dict[str, Any]], classes: list[str]):
    import pandas as pd

    columns = ["path", "label", "class_index", "probability"]
    columns += [f"{PROBABILITY_PREFIX}{c}" for c in classes] + ["error"]
    table = pd.DataFrame(rows, columns=columns)
    table["class_index"] = table["class_index"].astype("Int64")
    table["label"] = table["label"].astype("string")
    return table


def write_predictions(table, out: Path) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix.lower() == ".csv":
        table.to_csv(out, index=False)
    else:
        table.to_parquet(out, index=False)
    return out


def input_dataset(items: list[str], inputs: Sequence[str]):
    """The list of inputs as an MLflow dataset (its digest identifies the exact list)."""
    import mlflow.data
    import pandas as pd

    source = inputs[0] if len(inputs) == 1 else None
    if source and not is_s3(source):
        source = Path(source).resolve().as_uri()
    with warnings.catch_warnings():  # "can be interpreted in multiple ways": local files
        warnings.simplefilter("ignore", UserWarning)
        return mlflow.data.from_pandas(
            pd.DataFrame({"path": [str(x) for x in items]}), source=source, name="prediction-input"
        )


def predict(
    choice: ModelChoice,
    runtime,
    items: list[str],
    inputs: Sequence[str],
    out: Path,
    batch_size: int,
    experiment_id: str,
    fs=None,
    strict: bool = False,
) -> tuple[Scored, str]:
    """Score ``items`` inside an MLflow run (tag ``tlp.kind=prediction``; params model,
    runtime, batch size; metrics n, n_failed, images_per_second; the inputs as its dataset
    and the table as its artifact); returns what was scored and the run id. With ``strict``
    and any failed item, the run ends FAILED."""
    import mlflow

    from tasks.core import tracking

    with mlflow.start_run(
        experiment_id=experiment_id, run_name=f"predict {choice.name} v{choice.version}"
    ) as run:
        mlflow.set_tags({KIND_TAG: "prediction", "model_uri": choice.uri})
        tracking.log_params(
            {
                "model_uri": choice.uri,
                "model_ref": choice.ref,
                "runtime": choice.runtime,
                "batch_size": batch_size,
                "inputs": " ".join(inputs),
                "output": out.name,
            }
        )
        mlflow.log_input(input_dataset(items, inputs), context="prediction")
        scored = score(runtime, items, batch_size, fs)
        write_predictions(scored.table, out)
        tracking.log_metrics(
            {
                "n": scored.n,
                "n_failed": len(scored.failed),
                "images_per_second": scored.images_per_second,
                "seconds": scored.seconds,
            }
        )
        mlflow.log_artifact(str(out), artifact_path="predictions")
        if strict and scored.failed:
            mlflow.end_run(status="FAILED")
    return scored, run.info.run_id


def describe_failures(failed: list[tuple[str, str]]) -> str:
    shown = "; ".join(f"{path}: {error}" for path, error in failed[:SHOWN_FAILURES])
    more = len(failed) - SHOWN_FAILURES
    return shown + (f"; and {more} more" if more > 0 else "")
