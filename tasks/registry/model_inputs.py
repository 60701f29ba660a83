"""What the registered model accepts from a client, decoded and checked before any work.

A served model answers whoever can reach it, so its input is untrusted:

- **arrays**: uint8 (or integer 0..255) or float [0, 1] images, HxW or HxWxC (C in 1, 3, 4),
  one or a batch (NxHxW, NxHxWxC, or a list of images of different sizes), as ndarrays or
  the nested lists JSON gives; NaN and infinities, other dtypes and other shapes are refused;
- **encoded images**: PNG or JPEG bytes, raw or as a base64 string;
- **file paths**: off unless the model is loaded with an allowed root (``allow_paths_under``
  in the model config, or ``TLP_SERVE_ALLOW_PATHS_UNDER`` in the environment); then only
  regular files whose real path lies under that root are read. A string that is neither a
  valid encoded image nor (when allowed) such a file gets one and the same message, so a
  client cannot learn which server files exist.

Every image is held to ``max_image_pixels`` (the project's ``data.max_image_pixels``,
recorded in the model config at logging time), checked from the declared size (the PNG/JPEG
header, the nested lists' lengths) before anything is decoded or copied. A request to a
scoring server (MLflow's, which ``mlflow models serve`` and ``tlp serve-model`` run) holds
at most ``max_images``; a Python caller (the promotion gate, ``tlp predict``) may pass more.

A refusal raises ``InputError``: a ``ValueError`` for Python callers and an MLflow
``BAD_REQUEST`` (HTTP 400) for the scoring server, with a short message that names what is
wrong and holds nothing of the server (no path, no library internals).
"""

from __future__ import annotations

import base64
import binascii
import io
import os
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import BAD_REQUEST

PATHS_ENV = "TLP_SERVE_ALLOW_PATHS_UNDER"
MAX_IMAGES_PER_REQUEST = 256
FORMATS = ("PNG", "JPEG")
STRING_REFUSED = "an image given as a string must be a base64-encoded PNG or JPEG"
PATH_REFUSED = STRING_REFUSED + " or the path of an image file under the allowed root"


class InputError(MlflowException, ValueError):
    """A request the model refuses: HTTP 400 with ``str(error)`` as the whole message."""

    def __init__(self, message: str) -> None:
        super().__init__(message, error_code=BAD_REQUEST)
        self.short = message


@dataclass(frozen=True)
class InputPolicy:
    """The limits a model holds its inputs to, and where it may read files (None: nowhere)."""

    max_image_pixels: int
    max_images: int = MAX_IMAGES_PER_REQUEST
    paths_under: Path | None = None

    @classmethod
    def from_config(cls, config: Mapping[str, Any] | None, environ=os.environ) -> InputPolicy:
        """The policy of a loaded model: its ``model_config`` (logged, or given to
        ``load_model(..., model_config=...)``), then the environment for the path root.
        A model logged before the limits were recorded gets the tool's params.yaml value."""
        config = dict(config or {})
        pixels = config.get("max_image_pixels")
        if pixels is None:
            from tasks.core.params import default_section

            pixels = default_section("data").max_image_pixels
        root, source = config.get("allow_paths_under"), "model_config allow_paths_under"
        if not root and environ.get(PATHS_ENV):
            root, source = environ[PATHS_ENV], PATHS_ENV
        return cls(
            max_image_pixels=int(pixels),
            max_images=int(config.get("max_images_per_request") or MAX_IMAGES_PER_REQUEST),
            paths_under=allowed_root(root, source) if root else None,
        )


def allowed_root(root: str | Path, source: str) -> Path:
    """The real path of the root files may be read under; it must be a directory.
    ``source`` names where it was given, for the error."""
    real = Path(os.path.realpath(root))
    if not real.is_dir():
        raise ValueError(f"{source} {root}: not a directory")
    return real


def as_image_list(model_input: Any, policy: InputPolicy, channels: int = 3) -> list[np.ndarray]:
    """Normalise an accepted input to a list of checked image arrays (uint8 or float32).

    ``channels`` is what encoded images are decoded to (the model's own). Accepted: one
    image or a batch as an ndarray; a list of images (arrays, nested lists, bytes, strings);
    one string or bytes; a DataFrame whose ``image`` or ``path`` column (else its first)
    holds them.
    """
    import pandas as pd

    if isinstance(model_input, np.ndarray) and model_input.dtype != object:
        return _split_batch(_checked_array(model_input), policy)
    if isinstance(model_input, pd.DataFrame):
        columns = list(model_input.columns)
        first = columns[0] if columns else None
        column = next((c for c in ("image", "path") if c in columns), first)
        items = [] if column is None else list(model_input[column])
    elif isinstance(model_input, (str, bytes, Path)):
        items = [model_input]
    elif isinstance(model_input, (list, tuple, np.ndarray)):
        items = list(model_input)
    else:
        raise InputError(f"expected images, got {type(model_input).__name__}")
    if not items:
        raise InputError("no images in the request")
    limit = policy.max_images if serving() else None
    if limit is not None and len(items) > limit:
        raise InputError(f"{len(items)} images in one request; at most {limit}")
    images = [one for item in items for one in _image(item, policy, channels)]
    if limit is not None and len(images) > limit:
        raise InputError(f"{len(images)} images in one request; at most {limit}")
    return images


def serving() -> bool:
    """Whether this process is MLflow's scoring server (its own flag, set when it starts)."""
    from mlflow.environment_variables import _MLFLOW_IS_IN_SERVING_ENVIRONMENT

    return bool(_MLFLOW_IS_IN_SERVING_ENVIRONMENT.get())


def _image(item: Any, policy: InputPolicy, channels: int) -> list[np.ndarray]:
    """One item of a request's list: an image, or a batch of them."""
    if isinstance(item, bytes):
        return [decode_image(item, policy, channels)]
    if isinstance(item, (str, Path)):
        return [_from_string(str(item), policy, channels)]
    if isinstance(item, (list, tuple)):
        _check_declared_size(item, policy)
    try:
        arr = np.asarray(item)
    except (ValueError, TypeError):
        raise InputError("an image must be a rectangular array of numbers") from None
    # a list item may itself be a batch (NxHxW / NxHxWxC), as one ndarray input may be
    return _split_batch(_checked_array(arr), policy)


def _check_declared_size(item: list | tuple, policy: InputPolicy) -> None:
    """Refuse an oversized nested list from its lengths, before numpy copies it."""
    dims, node = [], item
    while isinstance(node, (list, tuple)) and len(dims) < 5:
        dims.append(len(node))
        node = node[0] if node else None
    if len(dims) >= 2 and dims[-1] in (1, 3, 4) and len(dims) >= 3:
        dims = dims[:-1]
    if len(dims) >= 2 and dims[-1] * dims[-2] > policy.max_image_pixels:
        raise _too_large(dims[-2], dims[-1], policy)


def _checked_array(arr: np.ndarray) -> np.ndarray:
    """Numbers only, finite, in range; integers become uint8, floats float32."""
    kind = arr.dtype.kind
    if kind in "iu":
        if arr.size and (arr.min() < 0 or arr.max() > 255):
            raise InputError("integer images must hold values 0..255")
        arr = arr.astype(np.uint8, copy=False)
    elif kind == "f":
        if not np.isfinite(arr).all():
            raise InputError("images must not hold NaN or infinite values")
        if arr.size and (arr.min() < 0 or arr.max() > 1):
            raise InputError("float images must hold values in [0, 1]; send uint8 for 0..255")
        arr = arr.astype(np.float32, copy=False)
    else:
        raise InputError(
            "images must be arrays of uint8 (0..255) or float (0..1) numbers, "
            "or base64-encoded PNG/JPEG strings"
        )
    if arr.ndim < 2 or arr.ndim > 4 or (arr.ndim == 4 and arr.shape[-1] not in (1, 3, 4)):
        raise InputError(
            f"an image must be HxW or HxWxC (C 1, 3 or 4), or a batch of them; "
            f"got shape {tuple(arr.shape)}"
        )
    return arr


def _is_batch(arr: np.ndarray) -> bool:
    """NxHxW or NxHxWxC; a 3-D array whose last axis is 3 or 4 (and first over 4) is one
    HxWxC image, as before."""
    if arr.ndim == 4:
        return True
    return arr.ndim == 3 and not (arr.shape[-1] in (1, 3, 4) and arr.shape[0] > 4)


def _split_batch(arr: np.ndarray, policy: InputPolicy) -> list[np.ndarray]:
    if not _is_batch(arr):
        return [_checked_image(arr, policy)]
    if serving() and arr.shape[0] > policy.max_images:
        raise InputError(f"{arr.shape[0]} images in one request; at most {policy.max_images}")
    return [_checked_image(one, policy) for one in arr]


def _checked_image(arr: np.ndarray, policy: InputPolicy) -> np.ndarray:
    height, width = arr.shape[:2]
    if height < 1 or width < 1:
        raise InputError(f"an image must have at least one pixel; got shape {tuple(arr.shape)}")
    if height * width > policy.max_image_pixels:
        raise _too_large(height, width, policy)
    return arr


def _too_large(height: int, width: int, policy: InputPolicy) -> InputError:
    return InputError(
        f"image of {height}x{width} = {height * width:,} pixels; at most "
        f"{policy.max_image_pixels:,} (data.max_image_pixels)"
    )


def _from_string(text: str, policy: InputPolicy, channels: int) -> np.ndarray:
    """A base64 PNG/JPEG, else (when allowed) a file under the root; one message for every
    other string, whatever exists on the server."""
    refused = PATH_REFUSED if policy.paths_under else STRING_REFUSED
    # base64 of the largest image allowed, uncompressed, with room for its headers
    if len(text) <= 4 * (policy.max_image_pixels * 4 + 2**20) // 3:
        try:
            data = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            data = b""
        if data[:8] == b"\x89PNG\r\n\x1a\n" or data[:3] == b"\xff\xd8\xff":
            return decode_image(data, policy, channels)
    if policy.paths_under is not None:
        data = read_allowed_file(text, policy)
        if data is not None:
            return decode_image(data, policy, channels)
    raise InputError(refused)


def read_allowed_file(text: str, policy: InputPolicy) -> bytes | None:
    """The bytes of a regular file whose real path is under the allowed root, or None.

    Relative paths are taken from the root. The file is checked with stat before it is
    opened (a FIFO or a device is never opened, so it cannot block a server thread) and
    again on the open descriptor, in case it was swapped in between.
    """
    root = policy.paths_under
    if root is None or "\x00" in text or len(text) > 4096:
        return None
    real = Path(os.path.realpath(root / text))
    if not real.is_relative_to(root):
        return None
    limit = policy.max_image_pixels * 4 + 2**20
    try:
        if not stat.S_ISREG(os.stat(real).st_mode):
            return None
        fd = os.open(real, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0))
        with os.fdopen(fd, "rb") as f:
            info = os.fstat(f.fileno())
            if not stat.S_ISREG(info.st_mode) or info.st_size > limit:
                return None
            return f.read(limit)
    except OSError:
        return None


def decode_image(data: bytes, policy: InputPolicy, channels: int) -> np.ndarray:
    """PNG or JPEG bytes as uint8 HxW (grey) or HxWx3; the size is checked from the header
    before the pixels are decoded."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data), formats=FORMATS) as img:
            width, height = img.size
            if width * height > policy.max_image_pixels:
                raise _too_large(height, width, policy)
            arr = np.asarray(img.convert("L" if channels == 1 else "RGB"))
    except InputError:
        raise
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError):
        raise InputError("an encoded image must be a valid PNG or JPEG") from None
    return _checked_image(arr, policy)
