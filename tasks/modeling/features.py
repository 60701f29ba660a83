"""Frozen-backbone features, computed once and cached on disk, and the scikit-learn linear probe.

The cache key is the hash of the checkpoint's weights plus the hash of the input tensor, so
a changed model or changed data can never be served stale features. The probe is a centred,
globally scaled logistic regression whose coefficients are folded back into the timm model's
classifier, so a probed model is an ordinary checkpoint for evaluation and serving.
"""

from __future__ import annotations

import hashlib
import warnings
from pathlib import Path

import numpy as np
import torch

from tasks.modeling.batches import features_and_logits, map_batches


def tensor_hash(tensor: torch.Tensor) -> str:
    return hashlib.sha256(tensor.detach().cpu().contiguous().numpy().tobytes()).hexdigest()[:16]


def model_hash(model: torch.nn.Module) -> str:
    digest = hashlib.sha256()
    for name, value in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(value.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def extract_features(
    model: torch.nn.Module, inputs: torch.Tensor, batch_size: int = 512
) -> torch.Tensor:
    return map_batches(model, lambda m, x: features_and_logits(m, x)[0], inputs, batch_size)


def cached_features(model: torch.nn.Module, inputs: torch.Tensor, cache_dir: Path | None):
    """Features of ``inputs``; read from ``cache_dir`` when this (model, data) pair was seen."""
    from safetensors.torch import load_file, save_file

    if cache_dir is None:
        return extract_features(model, inputs)
    path = cache_dir / f"{model_hash(model)}-{tensor_hash(inputs)}.safetensors"
    if path.is_file():
        return load_file(str(path))["features"]
    feats = extract_features(model, inputs)
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    save_file({"features": feats.contiguous()}, str(tmp))
    tmp.replace(path)
    return feats


def fit_probe(
    feats: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    c: float,
    seed: int,
    max_iter: int = 300,
):
    """Standardised multinomial logistic regression -> (weight, bias) on the raw features."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from threadpoolctl import threadpool_limits

    x = feats.numpy().astype(np.float64)
    y = labels.numpy()
    # one scale for all features (not per feature): near-constant features would otherwise
    # get huge folded weights, and LP-FT would start fine-tuning from exploding logits
    mean = x.mean(0)
    scale = float(x.std()) or 1.0
    clf = LogisticRegression(C=c, max_iter=max_iter, random_state=seed)
    # one BLAS thread: this problem is small, and on a busy machine more threads only spin
    # (100x slower measured on 2 shared cores); an unconverged probe is still a probe
    with warnings.catch_warnings(), threadpool_limits(1):
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf.fit((x - mean) / scale, y)
    weight = np.zeros((num_classes, x.shape[1]))
    bias = np.full(num_classes, -1e4)  # classes never seen in training are never predicted
    for row, cls in enumerate(clf.classes_):
        weight[cls] = clf.coef_[row] / scale
        bias[cls] = clf.intercept_[row] - (clf.coef_[row] * mean / scale).sum()
    return torch.tensor(weight, dtype=torch.float32), torch.tensor(bias, dtype=torch.float32)


def probe_accuracy(train_feats, train_labels, test_feats, test_labels, c: float, seed: int):
    """Linear-probe accuracy: how linearly separable a task is in a backbone's features."""
    n = int(max(train_labels.max(), test_labels.max())) + 1
    weight, bias = fit_probe(train_feats, train_labels, n, c, seed)
    preds = (test_feats @ weight.T + bias).argmax(1)
    return float((preds == test_labels).float().mean())


def set_head(model: torch.nn.Module, weight: torch.Tensor, bias: torch.Tensor) -> None:
    """Write a linear probe into the timm model's classifier (a fresh one of the right size)."""
    model.reset_classifier(weight.shape[0])
    head = model.get_classifier()
    with torch.no_grad():
        head.weight.copy_(weight)
        head.bias.copy_(bias)
