"""The registered model: an MLflow pyfunc that takes raw images and applies its own preprocessing.

That preprocessing is the card's, through the one ``preprocess`` function training used:
the same size, interpolation, mean and std, and the same channel conversion (a grey image
sent to an RGB model is repeated into 3 channels, a colour one sent to a grey model becomes
its luma), so a served prediction equals the one made at training time.

Loaded from a safetensors checkpoint and its card, so ``mlflow.pyfunc.load_model`` and
``mlflow models serve`` need nothing of the project beyond this installed package.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import mlflow.pyfunc
import numpy as np
import pandas as pd

CHECKPOINT_ARTIFACT = "checkpoint"


def _as_array(item: Any) -> np.ndarray:
    arr = np.asarray(item)
    if arr.dtype.kind in "iu" and arr.dtype != np.uint8:  # JSON gives ints: accept 0..255
        if arr.size and (arr.min() < 0 or arr.max() > 255):
            raise ValueError("integer images must hold values 0..255")
        arr = arr.astype(np.uint8)
    return arr


def as_image_list(model_input: Any) -> list:
    """Normalise the accepted inputs to a list of arrays or paths.

    Accepted: one path; a list of paths; one HxW or HxWxC array; an NxHxW or NxHxWxC array;
    a list of arrays (sizes may differ); a DataFrame with a ``path`` or ``image`` column.
    """
    if isinstance(model_input, pd.DataFrame):
        column = next(
            (c for c in ("path", "image") if c in model_input.columns), model_input.columns[0]
        )
        return as_image_list(list(model_input[column]))
    if isinstance(model_input, (str, Path)):
        return [model_input]
    if isinstance(model_input, np.ndarray):
        arr = _as_array(model_input)
        single = arr.ndim == 2 or (arr.ndim == 3 and arr.shape[-1] in (3, 4) and arr.shape[0] > 4)
        return [arr] if single else list(arr)
    items = list(model_input)
    return [x if isinstance(x, (str, Path)) else _as_array(x) for x in items]


class ImageClassifier(mlflow.pyfunc.PythonModel):
    """Raw images in; predicted label, its probability and every class probability out."""

    # Inputs are arrays of any shape or file paths: MLflow's type-hint coercion must not touch them.
    _skip_type_hint_validation = True

    def load_context(self, context) -> None:
        import torch

        from tasks.modeling.models import load_checkpoint

        torch.set_num_threads(max(1, min(4, torch.get_num_threads())))
        self.model, self.card = load_checkpoint(Path(context.artifacts[CHECKPOINT_ARTIFACT]))

    # No return hint: MLflow cannot read one from a DataFrame and says so at every log_model;
    # without it the output schema is the same ``any``. The result is a DataFrame.
    def predict(self, context, model_input: list[Any], params=None):
        import torch

        from tasks.data.preprocessing import preprocess

        inputs = preprocess(as_image_list(model_input), self.card.preprocess)
        with torch.no_grad():
            probs = torch.softmax(self.model(inputs).float(), dim=1).numpy()
        return prediction_frame(probs, self.card.classes)


def prediction_frame(probs: np.ndarray, classes) -> pd.DataFrame:
    """What every runtime of a registered model answers (this pyfunc, the ONNX export): the
    predicted class name, its probability and every class probability, one row per image."""
    best = probs.argmax(1)
    return pd.DataFrame(
        {
            "label": [classes[i] for i in best],
            "probability": probs[np.arange(len(best)), best].astype(float),
            "probabilities": [row.astype(float).tolist() for row in probs],
        }
    )
