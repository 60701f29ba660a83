"""The registered model: an MLflow pyfunc that takes raw images and applies its own preprocessing.

That preprocessing is the card's, through the one ``preprocess`` function training used:
the same size, interpolation, mean and std, and the same channel conversion (a grey image
sent to an RGB model is repeated into 3 channels, a colour one sent to a grey model becomes
its luma), so a served prediction equals the one made at training time.

Loaded from a safetensors checkpoint and its card, so ``mlflow.pyfunc.load_model`` and
``mlflow models serve`` need nothing of the project beyond this installed package.

What it accepts, and refuses, is ``model_inputs``'s: arrays and encoded images; file paths
only under a root the model config or ``TLP_SERVE_ALLOW_PATHS_UNDER`` allows; the pixel and
per-request limits of its model config (``model_config``, logged by ``publishing.log_model``
and overridable with ``mlflow.pyfunc.load_model(uri, model_config={...})``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import mlflow.pyfunc
import numpy as np
import pandas as pd

from tasks.registry.model_inputs import InputPolicy, as_image_list

CHECKPOINT_ARTIFACT = "checkpoint"


class ImageClassifier(mlflow.pyfunc.PythonModel):
    """Raw images in; predicted label, its probability and every class probability out."""

    # Inputs are arrays of any shape or encoded images: MLflow's type-hint coercion must not
    # touch them (``model_inputs`` checks them instead).
    _skip_type_hint_validation = True

    def load_context(self, context) -> None:
        import torch

        from tasks.modeling.models import load_checkpoint

        torch.set_num_threads(max(1, min(4, torch.get_num_threads())))
        self.model, self.card = load_checkpoint(Path(context.artifacts[CHECKPOINT_ARTIFACT]))
        self.policy = InputPolicy.from_config(getattr(context, "model_config", None))

    # No return hint: MLflow cannot read one from a DataFrame and says so at every log_model;
    # without it the output schema is the same ``any``. The result is a DataFrame.
    def predict(self, context, model_input: list[Any], params=None):
        import torch

        from tasks.data.preprocessing import preprocess

        cfg = self.card.preprocess
        inputs = preprocess(as_image_list(model_input, self.policy, cfg.channels), cfg)
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
