import numpy as np
import pytest
import torch
from PIL import Image

from tasks.params import PreprocessParams
from tasks.preprocessing import preprocess

GREY = PreprocessParams(image_size=16, channels=1, mean=(0.5,), std=(0.5,))
RGB = PreprocessParams(image_size=16, channels=3, mean=(0.5,) * 3, std=(0.5,) * 3)


def test_uint8_grey_batch_is_resized_and_normalised():
    images = np.full((4, 8, 8), 255, dtype=np.uint8)
    out = preprocess(images, GREY)
    assert out.shape == (4, 1, 16, 16) and out.dtype == torch.float32
    assert torch.allclose(out, torch.ones_like(out))  # (1 - 0.5) / 0.5


def test_channels_convert_both_ways_and_paths_load(tmp_path):
    rgb = np.zeros((10, 12, 3), dtype=np.uint8)
    rgb[..., 1] = 255
    assert preprocess([rgb], GREY).shape == (1, 1, 16, 16)
    assert preprocess([np.zeros((8, 8), np.uint8)], RGB).shape == (1, 3, 16, 16)
    path = tmp_path / "palette.png"
    Image.fromarray(rgb).convert("P").save(path)
    from_path = preprocess([path], GREY)
    from_array = preprocess([np.asarray(Image.open(path).convert("L"))], GREY)
    assert torch.allclose(from_path, from_array)


def test_mixed_sizes_and_rgba_are_accepted():
    images = [np.zeros((8, 8), np.uint8), np.zeros((20, 30, 4), np.uint8)]
    assert preprocess(images, RGB).shape == (2, 3, 16, 16)


def test_degrade_to_loses_detail():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (28, 28), dtype=np.uint8)
    sharp, blurred = preprocess([image], GREY), preprocess([image], GREY, degrade_to=4)
    assert blurred.std() < sharp.std()


@pytest.mark.parametrize(
    ("image", "message"),
    [
        (np.full((8, 8), 2.0), r"float images must be in \[0, 1\]"),
        (np.zeros((8, 8), dtype=np.int32), "expected uint8"),
        (np.zeros((2, 8, 8, 3), dtype=np.uint8), "HxW or HxWxC"),
    ],
)
def test_bad_inputs_are_explained(image, message):
    with pytest.raises(ValueError, match=message):
        preprocess([image], GREY)


def test_unreadable_file_is_named(tmp_path):
    from tasks.preprocessing import read_image

    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    with pytest.raises(ValueError, match="broken.png: cannot read image"):
        read_image(bad, channels=1)
