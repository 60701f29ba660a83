"""The registered model as ONNX: exported at registration, checked for parity, optionally INT8.

``export_onnx`` runs torch's dynamo exporter on a checkpoint (one input ``images``: float32
``[batch, C, H, W]``, already preprocessed; one output ``logits``; the batch dimension
dynamic) and writes into the file's metadata what a runtime without this project needs to
feed it: the class names, the preprocessing (size, channels, mean, std, interpolation: the
card's ``PreprocessParams``), the architecture, the strategy and how the training images'
channels were converted. ``check_parity`` then runs onnxruntime (CPU) and torch on the whole
target test split: the largest absolute logit difference must be at most
``export.parity_atol`` and every predicted label identical, or ``ExportError`` says by how
much, and the register stage registers nothing (``export_candidate`` runs before
``log_model``). With ``export.int8`` an INT8 copy (onnxruntime static quantization, QDQ,
per-channel weights, calibrated on target images outside the test split) is written next to
it and measured (accuracy change, size and latency ratios); it never replaces the float model.

``OnnxClassifier`` loads such a file back and predicts from raw images with the same
``preprocess`` function and the same output columns as the registered pyfunc
(``tasks/registry/serving.py``); ``tlp predict --runtime onnx`` uses it.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

from tasks.core.context import PATHS, WORK_DIR, StageContext, write_json
from tasks.core.params import PreprocessParams

log = logging.getLogger(__name__)

ONNX_FILE = "model.onnx"
INT8_FILE = "model.int8.onnx"
INPUT_NAME = "images"
OUTPUT_NAME = "logits"
ARTIFACT_DIR = "onnx"  # where the register run keeps the files (tag export.onnx names it)
META = "tlp."  # prefix of this project's ONNX metadata keys
PARITY_BATCH = 256
CALIBRATION_IMAGES = 512  # at most this many target images calibrate the INT8 activations


class ExportError(RuntimeError):
    """The ONNX export failed or disagrees with torch; the message says by how much and what
    to change. Raised before anything is registered."""


def onnx_metadata(card) -> dict[str, str]:
    """What a runtime needs to feed the file raw images and name its outputs (strings only:
    ONNX metadata_props are string pairs)."""
    return {
        f"{META}classes": json.dumps(list(card.classes)),
        f"{META}preprocess": json.dumps(card.preprocess.model_dump(mode="json")),
        f"{META}arch": card.arch,
        f"{META}strategy": card.strategy or "",
        f"{META}input_conversion": card.input_conversion or "",
        f"{META}input": f"{INPUT_NAME}: float32 [batch, C, H, W], preprocessed as {META}preprocess",
        f"{META}output": f"{OUTPUT_NAME}: float32 [batch, classes], in the order of {META}classes",
    }


def export_onnx(ckpt_dir: Path, out_path: Path, opset: int) -> Path:
    """Export a checkpoint to ONNX with a dynamic batch dimension and the card as metadata."""
    import onnx
    import torch

    from tasks.data.preprocessing import describe_input
    from tasks.modeling.models import load_checkpoint

    model, card = load_checkpoint(ckpt_dir)
    cfg = card.preprocess
    example = torch.zeros(2, cfg.channels, cfg.image_size, cfg.image_size)
    try:
        program = torch.onnx.export(
            model,
            (example,),
            dynamo=True,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_shapes=({0: torch.export.Dim("batch")},),
            opset_version=opset,
            verbose=False,  # its progress lines would go to stdout
        )
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ExportError(
            f"{card.arch} could not be exported to ONNX (opset {opset}): {first}; "
            "set export.onnx: false to register without an export"
        ) from exc
    proto = program.model_proto
    onnx.helper.set_model_props(proto, onnx_metadata(card))
    proto.doc_string = f"{card.arch} ({card.strategy or 'source'}): {describe_input(cfg)}"
    out_path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(proto, str(out_path))
    return out_path


def export_key(ckpt_dir: Path, opset: int) -> str:
    """What an export depends on: the checkpoint's bytes (weights and card), the opset and
    the exporter's versions."""
    import hashlib
    from importlib.metadata import version

    from tasks.modeling.models import CARD, WEIGHTS

    digest = hashlib.sha256()
    for name in (WEIGHTS, CARD):
        digest.update((ckpt_dir / name).read_bytes())
    digest.update(f"{opset}:{version('torch')}:{version('onnxscript')}".encode())
    return digest.hexdigest()[:32]


def cached_export(ckpt_dir: Path, out_path: Path, opset: int, cache_dir: Path) -> bool:
    """``export_onnx`` once per checkpoint, opset and exporter: a repeated registration of
    the same weights (``dvc repro --force``, an export or registry param changed) copies
    the earlier file instead of paying the exporter again (seconds, most of the register
    stage). The parity check still runs on the copy. Returns whether the cache served it."""
    cached = cache_dir / f"{export_key(ckpt_dir, opset)}.onnx"
    if cached.is_file():
        shutil.copyfile(cached, out_path)
        return True
    export_onnx(ckpt_dir, out_path, opset)
    cache_dir.mkdir(parents=True, exist_ok=True)
    for old in cache_dir.glob("*.onnx"):  # one export kept: the cache is for reruns
        old.unlink()
    tmp = cached.with_suffix(".tmp")
    shutil.copyfile(out_path, tmp)
    tmp.replace(cached)
    return False


def onnx_session(path: Path, threads: int | None = None):
    """An onnxruntime CPU session (``threads``: intra-op threads, default onnxruntime's)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3  # its warnings about unused initializers are not ours
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if threads:
        options.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def onnx_logits(session, inputs, batch_size: int = PARITY_BATCH) -> np.ndarray:
    """Logits of preprocessed NCHW inputs (a tensor or an array), in batches."""
    arr = inputs.numpy() if hasattr(inputs, "numpy") else np.asarray(inputs)
    arr = np.ascontiguousarray(arr, dtype=np.float32)
    out = [
        session.run([OUTPUT_NAME], {INPUT_NAME: arr[i : i + batch_size]})[0]
        for i in range(0, len(arr), batch_size)
    ]
    return np.concatenate(out) if out else np.empty((0, 0), np.float32)


def measure_parity(
    onnx_path: Path, ckpt_dir: Path, data_dir: Path, atol: float, split: str = "test"
) -> dict[str, Any]:
    """onnxruntime against torch on every image of a split: the largest absolute logit
    difference, how many predicted labels differ, and the accuracy of the ONNX model."""
    import torch

    from tasks.data.loading import load_tensors
    from tasks.modeling.batches import predict_logits
    from tasks.modeling.models import load_checkpoint

    model, card = load_checkpoint(ckpt_dir)
    inputs, labels, _ = load_tensors(data_dir, split, card.preprocess)
    session = onnx_session(onnx_path, torch.get_num_threads())
    got = onnx_logits(session, inputs)
    ref = predict_logits(model, inputs, PARITY_BATCH).numpy()
    n = len(labels)
    diff = float(np.abs(got - ref).max()) if n else float("nan")
    mismatches = int((got.argmax(1) != ref.argmax(1)).sum()) if n else 0
    return {
        "split": split,
        "n": n,
        "max_abs_logit_diff": diff,
        "labels_identical": mismatches == 0,
        "label_mismatches": mismatches,
        "atol": atol,
        "accuracy_onnx": float((got.argmax(1) == labels.numpy()).mean()) if n else None,
        "passed": bool(n) and diff <= atol and mismatches == 0,
    }


def parity_problem(parity: dict[str, Any]) -> str | None:
    """Why a parity result fails, in one sentence naming the numbers; None when it passes."""
    if parity["passed"]:
        return None
    where = f"the target {parity['split']} split"
    if not parity["n"]:
        return f"ONNX parity cannot be checked: {where} has no images"
    found = []
    if not parity["max_abs_logit_diff"] <= parity["atol"]:
        found.append(
            f"max |logit difference| {parity['max_abs_logit_diff']:.3g} > "
            f"export.parity_atol {parity['atol']:.3g}"
        )
    if parity["label_mismatches"]:
        found.append(f"predicted labels differ on {parity['label_mismatches']} images")
    return (
        f"ONNX export disagrees with torch on {parity['n']} images of {where}: "
        f"{'; '.join(found)}; nothing was registered (set export.onnx: false to register "
        "without an export, or raise export.parity_atol if the difference is acceptable)"
    )


def check_parity(
    onnx_path: Path, ckpt_dir: Path, data_dir: Path, atol: float, split: str = "test"
) -> dict[str, Any]:
    """``measure_parity``, raising ``ExportError`` when the export fails it."""
    parity = measure_parity(onnx_path, ckpt_dir, data_dir, atol, split)
    problem = parity_problem(parity)
    if problem:
        raise ExportError(problem)
    return parity


def calibration_inputs(data_dir: Path, cfg: PreprocessParams, seed: int = 0):
    """Preprocessed target images outside the test split (labelled train and the unlabelled
    pool; validation when those are empty) to calibrate INT8 activation ranges, at most
    ``CALIBRATION_IMAGES``, drawn with a fixed seed."""
    import torch

    from tasks.data.loading import load_tensors
    from tasks.data.manifest import read_manifest

    splits = set(read_manifest(data_dir)["split"])
    chosen = [s for s in ("train", "unlabeled") if s in splits] or ["val"]
    inputs = torch.cat([load_tensors(data_dir, s, cfg)[0] for s in chosen])
    if len(inputs) > CALIBRATION_IMAGES:
        gen = torch.Generator().manual_seed(seed)
        inputs = inputs[torch.randperm(len(inputs), generator=gen)[:CALIBRATION_IMAGES]]
    return inputs


def quantize_int8(onnx_path: Path, out_path: Path, calibration) -> Path:
    """Static INT8 quantization (QDQ, per-channel weights) after onnxruntime's recommended
    pre-processing (shape inference, graph optimisation); activation ranges from
    ``calibration`` (preprocessed inputs). Static, not dynamic: onnxruntime's dynamic
    quantization of convolutions (ConvInteger) ran 4x slower than the float model here."""
    import tempfile

    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    batches = [
        {INPUT_NAME: np.ascontiguousarray(b.numpy(), dtype=np.float32)}
        for b in calibration.split(32)
    ]

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.items = iter(batches)

        def get_next(self):
            return next(self.items, None)

    with tempfile.TemporaryDirectory() as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(str(onnx_path), str(prepared))
        quantize_static(
            str(prepared),
            str(out_path),
            Reader(),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QInt8,
            weight_type=QuantType.QInt8,
        )
    return out_path


def _median_seconds(session, inputs: np.ndarray, repeats: int = 3) -> float:
    onnx_logits(session, inputs[:64])  # warm-up
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        onnx_logits(session, inputs, 64)
        times.append(time.perf_counter() - started)
    return float(np.median(times))


def int8_report(float_path: Path, int8_path: Path, inputs, labels) -> dict[str, Any]:
    """The INT8 model against the float one on the same inputs: accuracy, agreement, file
    size and inference time (median of 3 passes in batches of 64, same threads)."""
    import torch

    threads = torch.get_num_threads()
    arr = np.ascontiguousarray(inputs.numpy(), dtype=np.float32)
    truth = labels.numpy()
    fp, q8 = onnx_session(float_path, threads), onnx_session(int8_path, threads)
    pred_fp, pred_q8 = onnx_logits(fp, arr).argmax(1), onnx_logits(q8, arr).argmax(1)
    accuracy_fp, accuracy_q8 = float((pred_fp == truth).mean()), float((pred_q8 == truth).mean())
    return {
        "onnx": f"{PATHS['export']}/{INT8_FILE}",
        "method": "onnxruntime static quantization, QDQ, int8 weights (per channel) and "
        "activations",
        "n": len(truth),
        "accuracy_float": accuracy_fp,
        "accuracy_int8": accuracy_q8,
        "accuracy_change": accuracy_q8 - accuracy_fp,
        "agreement": float((pred_fp == pred_q8).mean()),
        "size_bytes": int8_path.stat().st_size,
        "size_ratio": int8_path.stat().st_size / float_path.stat().st_size,
        "latency_ratio": _median_seconds(q8, arr) / _median_seconds(fp, arr),
    }


def _int8(ctx: StageContext, onnx_path: Path, ckpt_dir: Path) -> dict[str, Any]:
    from tasks.data.loading import load_tensors
    from tasks.modeling.models import read_card

    layout, card = ctx.layout, read_card(ckpt_dir)
    calibration = calibration_inputs(layout.target_data, card.preprocess, ctx.params.base.seed)
    int8_path = quantize_int8(onnx_path, layout.export / INT8_FILE, calibration)
    inputs, labels, _ = load_tensors(layout.target_data, "test", card.preprocess)
    return {**int8_report(onnx_path, int8_path, inputs, labels), "calibration": len(calibration)}


def export_candidate(ctx: StageContext, best: str) -> dict[str, Any]:
    """Export the candidate about to be registered, check its parity and, with
    ``export.int8``, quantize it; write ``reports/export.json`` and return it. Raises
    ``ExportError`` (after writing the report) when parity fails, so the register stage
    stops before anything is logged or registered."""
    cfg, layout = ctx.params.export, ctx.layout
    shutil.rmtree(layout.export, ignore_errors=True)  # no stale file of an earlier export
    layout.export.mkdir(parents=True)
    if not cfg.onnx:
        report = {"onnx": None, "opset": None, "parity": None, "size_bytes": None, "int8": None}
        write_json(layout.export_report, {**report, "strategy": best})
        return report
    ckpt, path = layout.candidates / best, layout.export / ONNX_FILE
    started = time.perf_counter()
    reused = cached_export(ckpt, path, cfg.opset, ctx.project_dir / WORK_DIR / "export")
    exported = time.perf_counter()
    parity = measure_parity(path, ckpt, layout.target_data, cfg.parity_atol)
    report = {
        "onnx": f"{PATHS['export']}/{ONNX_FILE}",
        "opset": cfg.opset,
        "strategy": best,
        "parity": parity,
        "size_bytes": path.stat().st_size,
        "reused_export": reused,
        "seconds": {
            "export": round(exported - started, 3),
            "parity": round(time.perf_counter() - exported, 3),
        },
        "int8": None,
    }
    problem = parity_problem(parity)
    if problem:
        write_json(layout.export_report, report)
        raise ExportError(problem)
    if cfg.int8:
        int8_started = time.perf_counter()
        report["int8"] = _int8(ctx, path, ckpt)
        report["seconds"]["int8"] = round(time.perf_counter() - int8_started, 3)
    write_json(layout.export_report, report)
    log.info(
        "register: ONNX export (opset %d) matches torch on %d test images (max |logit "
        "difference| %.2g)%s",
        cfg.opset,
        parity["n"],
        parity["max_abs_logit_diff"],
        _int8_note(report["int8"]),
    )
    return report


def _int8_note(int8: dict | None) -> str:
    if not int8:
        return ""
    return (
        f"; INT8: accuracy {int8['accuracy_change']:+.4f}, size x{int8['size_ratio']:.2f}, "
        f"latency x{int8['latency_ratio']:.2f}"
    )


def log_export(report: dict[str, Any], project_dir: Path) -> dict[str, str]:
    """In the active (register) run: the ONNX file(s) and the report under ``onnx/``, the
    parity and INT8 figures as metrics. Returns the version's compact ``export.*`` tags."""
    import mlflow

    from tasks.core import tracking

    if not report.get("onnx"):
        return {"export.onnx": "none"}
    files = [report["onnx"]] + ([report["int8"]["onnx"]] if report.get("int8") else [])
    for rel in [*files, PATHS["export_report"]]:
        mlflow.log_artifact(str(project_dir / rel), artifact_path=ARTIFACT_DIR)
    parity = report["parity"]
    metrics = {
        "onnx_parity_max_abs_diff": parity["max_abs_logit_diff"],
        "onnx_parity_label_mismatches": parity["label_mismatches"],
        "onnx_parity_n": parity["n"],
        "onnx_size_bytes": report["size_bytes"],
        "onnx_export_seconds": report["seconds"]["export"],
    }
    tags = {
        "export.onnx": f"{ARTIFACT_DIR}/{ONNX_FILE}",
        "export.opset": str(report["opset"]),
        "export.parity_max_abs_diff": f"{parity['max_abs_logit_diff']:.2e}",
    }
    if report.get("int8"):
        q8 = report["int8"]
        metrics |= {
            "int8_accuracy": q8["accuracy_int8"],
            "int8_accuracy_change": q8["accuracy_change"],
            "int8_size_ratio": q8["size_ratio"],
            "int8_latency_ratio": q8["latency_ratio"],
        }
        tags["export.int8"] = f"{ARTIFACT_DIR}/{INT8_FILE}"
    tracking.log_metrics(metrics)
    return tags


class OnnxClassifier:
    """A tlp ONNX export, loaded with its metadata: raw images in, the registered pyfunc's
    columns out (label, probability, probabilities), through the same ``preprocess``."""

    def __init__(self, path: Path, threads: int | None = None) -> None:
        self.path = Path(path)
        self.session = onnx_session(self.path, threads)
        meta = self.session.get_modelmeta().custom_metadata_map
        missing = [k for k in ("classes", "preprocess") if f"{META}{k}" not in meta]
        if missing:
            names = ", ".join(META + k for k in missing)
            raise ExportError(f"{self.path}: not a tlp ONNX export (metadata {names} missing)")
        self.metadata = {k[len(META) :]: v for k, v in meta.items() if k.startswith(META)}
        self.classes = tuple(json.loads(meta[f"{META}classes"]))
        self.preprocess = PreprocessParams.model_validate(json.loads(meta[f"{META}preprocess"]))
        self.policy = None  # what it accepts (``model_inputs``), read at the first call

    def logits(self, inputs) -> np.ndarray:
        """Logits of already preprocessed NCHW float32 inputs."""
        return onnx_logits(self.session, inputs)

    def probabilities(self, images) -> np.ndarray:
        """Class probabilities of raw images (anything the pyfunc takes), softmax as torch
        computes it for the pyfunc."""
        import torch

        from tasks.data.preprocessing import preprocess
        from tasks.registry.model_inputs import InputPolicy, as_image_list

        if self.policy is None:  # arrays and encoded images, as the pyfunc takes them
            self.policy = InputPolicy.from_config(None)
        cfg = self.preprocess
        inputs = preprocess(as_image_list(images, self.policy, cfg.channels), cfg)
        return torch.softmax(torch.from_numpy(self.logits(inputs)), dim=1).numpy()

    def predict(self, images):
        from tasks.registry.serving import prediction_frame

        return prediction_frame(self.probabilities(images), self.classes)
