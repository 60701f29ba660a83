import numpy as np
import pytest
import torch
from PIL import Image

from tasks.core.params import default_section
from tasks.data.preprocessing import preprocess

GREY = default_section("preprocess", image_size=16, channels=1, mean=(0.5,), std=(0.5,))
RGB = default_section("preprocess", image_size=16, channels=3, mean=(0.5,) * 3, std=(0.5,) * 3)


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
    from tasks.data.preprocessing import read_image

    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    with pytest.raises(ValueError, match="broken.png: cannot read image"):
        read_image(bad, channels=1)


def test_fit_to_frame_makes_a_small_digit_fill_the_frame_in_height():
    from tasks.data.preprocessing import fit_to_frame

    image = torch.zeros(1, 28, 28)
    image[0, 10:16, 12:15] = 1.0  # a 6x3 stroke in a wide margin
    out = fit_to_frame(image, 8)
    ink = out[0] > 0.5
    assert out.shape == (1, 8, 8)
    assert ink.any(1).all()  # every row has ink: the height fills the frame
    columns = ink.any(0).nonzero().flatten()
    assert 3 <= len(columns) <= 5 and columns[0] >= 1 and columns[-1] <= 6  # aspect, centred


def test_fit_to_frame_keeps_a_blank_image_and_its_background():
    from tasks.data.preprocessing import fit_to_frame

    blank = torch.full((3, 20, 20), 0.7)
    assert torch.allclose(fit_to_frame(blank, 8), torch.full((3, 8, 8), 0.7))
    light = torch.ones(1, 20, 20)
    light[0, 5:15, 8:12] = 0.0  # dark ink on a light background
    out = fit_to_frame(light, 10)
    assert out[0, :, 0].min() == 1.0 and out[0].min() < 0.1


def test_fit_frame_option_is_applied_before_the_resolution():
    digit = np.zeros((28, 28), np.uint8)
    digit[10:18, 12:16] = 255
    framed = preprocess([digit], GREY, degrade_to=8, fit_frame=True)
    plain = preprocess([digit], GREY, degrade_to=8)
    assert framed.shape == plain.shape == (1, 1, 16, 16)
    assert (framed > 0).sum() > 2 * (plain > 0).sum()
