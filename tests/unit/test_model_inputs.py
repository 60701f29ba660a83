"""What the registered model accepts from a client (``tasks.registry.model_inputs``): arrays
and encoded images; file paths only under an allowed root, refused otherwise with the same
message whether the file exists or not; NaN, wrong shapes and dtypes, oversized images and
requests refused before any work."""

import base64
import io
import os
import time

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from tasks.registry.model_inputs import (
    PATH_REFUSED,
    PATHS_ENV,
    STRING_REFUSED,
    InputError,
    InputPolicy,
    as_image_list,
)

POLICY = InputPolicy(max_image_pixels=10_000, max_images=8)


def png(shape=(9, 9)) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.full(shape, 7, np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


def refusal(model_input, policy=POLICY) -> str:
    with pytest.raises(InputError) as caught:
        as_image_list(model_input, policy)
    return caught.value.short


def test_batches_and_single_images():
    assert len(as_image_list(np.zeros((5, 8, 8), np.uint8), POLICY)) == 5
    assert len(as_image_list(np.zeros((8, 8), np.uint8), POLICY)) == 1
    assert len(as_image_list(np.zeros((28, 28, 3), np.uint8), POLICY)) == 1
    assert len(as_image_list(np.zeros((2, 28, 28, 3), np.uint8), POLICY)) == 2
    assert len(as_image_list([np.zeros((4, 4)), np.zeros((6, 5, 3))], POLICY)) == 2


def test_json_integer_images_become_uint8():
    images = as_image_list([[[0, 255], [16, 3]]], POLICY)
    assert images[0].dtype == np.uint8 and images[0].shape == (2, 2)
    assert "0..255" in refusal([[[0, 256], [0, 0]]])


def test_encoded_images_raw_or_base64_in_the_model_channels():
    data = png()
    assert as_image_list([data], POLICY, channels=3)[0].shape == (9, 9, 3)
    text = base64.b64encode(data).decode()
    assert as_image_list(text, POLICY, channels=1)[0].shape == (9, 9)
    frame = pd.DataFrame({"image": [text, text]})
    assert len(as_image_list(frame, POLICY, channels=1)) == 2
    assert refusal([b"\x89PNG\r\n\x1a\n broken"]) == "an encoded image must be a valid PNG or JPEG"


def test_paths_are_refused_alike_whether_the_file_exists_or_not(tmp_path):
    existing = tmp_path / "digit.png"
    existing.write_bytes(png())
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    names = ["/etc/passwd", "/nonexistent", "/root", str(existing), str(fifo), "../x.png"]
    answers = {refusal([name]) for name in names}
    assert answers == {STRING_REFUSED}
    assert "/" not in STRING_REFUSED.replace("PNG/JPEG", "")


def test_allowed_root_reads_regular_files_under_it_only(tmp_path):
    root = tmp_path / "images"
    (root / "a").mkdir(parents=True)
    (root / "a" / "digit.png").write_bytes(png())
    (tmp_path / "outside.png").write_bytes(png())
    (root / "escape.png").symlink_to(tmp_path / "outside.png")
    os.mkfifo(root / "pipe.png")
    policy = InputPolicy.from_config({"max_image_pixels": 10_000, "allow_paths_under": str(root)})
    read = as_image_list([str(root / "a" / "digit.png"), "a/digit.png"], policy)
    assert [image.shape for image in read] == [(9, 9, 3), (9, 9, 3)]
    started = time.monotonic()
    refused = ["escape.png", "pipe.png", "../outside.png", str(tmp_path / "outside.png"),
               "/etc/passwd", "missing.png", "a"]  # fmt: skip
    assert {refusal([name], policy) for name in refused} == {PATH_REFUSED}
    assert time.monotonic() - started < 2  # the FIFO was never opened


def test_the_root_comes_from_the_model_config_or_the_environment(tmp_path):
    env = {PATHS_ENV: str(tmp_path)}
    assert InputPolicy.from_config({"max_image_pixels": 9}, env).paths_under == tmp_path
    assert InputPolicy.from_config({"max_image_pixels": 9}, {}).paths_under is None
    with pytest.raises(ValueError, match=f"{PATHS_ENV} {tmp_path / 'no'}: not a directory"):
        InputPolicy.from_config({"max_image_pixels": 9}, {PATHS_ENV: str(tmp_path / "no")})
    # a model logged before the limit was recorded gets params.yaml's data.max_image_pixels
    assert InputPolicy.from_config(None, {}).max_image_pixels == 16_000_000


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ([[[float("nan")] * 3] * 3], "NaN or infinite"),
        ([[[float("inf")] * 3] * 3], "NaN or infinite"),
        ([[[0.5, 2.0], [0.0, 0.1]]], "float images must hold values in [0, 1]"),
        ([[["a", "b"], ["c", "d"]]], "arrays of uint8"),
        ([[[True, False], [True, True]]], "arrays of uint8"),
        (np.zeros((1, 1, 2, 2, 2), np.uint8), "got shape (1, 1, 2, 2, 2)"),
        ([[1, 2, 3]], "got shape (3,)"),
        ([[[0, 1], [2]]], "rectangular array"),
        ([], "no images"),
        ({"a": 1}, "expected images"),
        (np.zeros((0, 5), np.uint8), "at least one pixel"),
    ],
)
def test_bad_values_shapes_and_dtypes_are_refused(bad, message):
    assert message in refusal(bad)


def test_oversized_images_are_refused_before_they_are_copied():
    row = [0] * 10_000
    huge = [row] * 10_000  # 10^8 pixels as nested lists, a few kB of Python objects
    started = time.monotonic()
    assert "10000x10000 = 100,000,000 pixels; at most 10,000" in refusal([huge])
    assert time.monotonic() - started < 0.5
    assert "200x300" in refusal([png((200, 300))])  # from the PNG header
    assert "at most 10,000" in refusal(np.zeros((101, 100), np.uint8))


def test_images_per_request_are_limited_in_a_scoring_server(monkeypatch):
    many = [np.zeros((2, 2), np.uint8)] * 9
    assert len(as_image_list(many, POLICY)) == 9  # a Python caller (the gate) may pass more
    monkeypatch.setenv("_MLFLOW_IS_IN_SERVING_ENVIRONMENT", "true")
    assert "9 images in one request; at most 8" in refusal(many)
    assert "at most 8" in refusal(np.zeros((9, 2, 2), np.uint8))


def test_a_refusal_is_a_value_error_and_an_http_400():
    error = InputError("no images in the request")
    assert isinstance(error, ValueError) and error.get_http_status_code() == 400
